//! The session core: which device may use the internet, on which access code, until when and
//! for how many bytes.
//!
//! This is a pure state machine in the manner of boringtun's `Tunn`: **no I/O here** — no
//! sockets, no files, no tokio, no clock reads. The async shell feeds it events (a code accepted
//! at the portal, byte counters, a tick about once a second, an operator's kick or revoke),
//! passes the time in as [`Millis`], and carries out the [`Action`]s it returns:
//! [`Action::Allow`] and [`Action::Revoke`] go to the firewall, [`Action::SessionEnded`] to the
//! usage ledger or the local code store. Its state is serialisable ([`Snapshot`]) so sessions
//! survive a restart or `kill -9`.
//!
//! # Words
//! - A *session* belongs to one access code: its quota, the bytes used so far and its expiry.
//!   It lives from the first time the code is accepted until it ends *for good* (quota used,
//!   expired, code revoked); it outlives its devices (kick, idle, a device moving elsewhere).
//! - A *device* is a [`Client`] (MAC + IP) bound to a session and allowed through the
//!   firewall, with the other addresses the same MAC uses (its IPv6 addresses from SLAAC,
//!   privacy addresses that come and go, its IPv4 address if it logged in over IPv6),
//!   learned from the neighbour table ([`Core::learn_addresses`]): each address is a client
//!   of its own for the firewall and the meters, all of them one device for the session,
//!   its device limit and its bytes. A MAC and an IP are each in at most one device at a
//!   time.
//! - A session may belong to a *consumer*: the backend account of whoever signed in on the
//!   portal when the session started (its id, nothing else). The ledger names it with the
//!   session's usage, so the backend counts the bytes for that account. It is fixed for the
//!   session's life: a code is billed as one, so its session counts for one account. A later
//!   entry of the code signed in with another account, or with one on a session that began
//!   without, is refused ([`Refusal::OtherAccount`]); an entry without an account joins the
//!   session as it is.
//! - An *ended code* is remembered after its session ended and refused until the code itself
//!   expires, or for [`REMEMBER_ENDED`] at most: the backend only learns usage when the ledger
//!   has reported it, so until then it would grant the code again with bytes already spent.
//!
//! # Byte bookkeeping
//! Every delta given to [`Core::record_usage`] lands in exactly one place: the `used_bytes`
//! of the session its client is a device of (and that device's own tally), or, if the client is
//! in no session, [`Core::unattributed_bytes`]. A session's `used_bytes` is handed out once, in
//! the [`Action::SessionEnded`] that ends it; nothing else ever subtracts from it. So at every
//! moment, exactly (below 2^64 bytes, where the counters saturate):
//!
//! ```text
//! Σ deltas given = Σ used_bytes of live sessions + Σ SessionEnded.used_bytes + unattributed_bytes
//! ```
//!
//! Bytes of a device that is kicked, idles out or moves stay in its session. What the shell
//! must do for the sum to mean what it should: read a client's counter before it carries out
//! that client's `Revoke` (else the last bytes arrive for a client in no session), and call
//! `record_usage` before `tick` (so bytes used just before expiry are still charged to the
//! session they were used in). A session's `used_bytes` may exceed its quota by the last
//! delta: those bytes were really used; the ledger clamps the final report to what remains.

use std::cmp::Reverse;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use edgeshare_shared::code::AccessCode;
use serde::{Deserialize, Serialize};

use crate::net::{Client, Mac, Millis};
use crate::refusal::Refusal;

/// How long an ended code is refused at most when the code itself expires later (or never):
/// by then the ledger has long reported the session's usage to the backend.
pub const REMEMBER_ENDED: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// The most addresses a device has besides the one it logged in with. A phone has a
/// stable IPv6 address, a privacy address or two and an IPv4 address; the cap keeps one
/// device from filling the kernel's sets with addresses it makes up.
pub const MAX_ADDRESSES_PER_DEVICE: usize = 8;

/// The operator's rules for sessions (from the `[session]` part of the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// How many devices may use one code at once; 0 is treated as 1.
    pub devices_per_code: u32,
    /// A device with no traffic for longer than this is revoked (its session stays);
    /// `None`: never.
    pub idle_timeout: Option<Duration>,
    /// The longest a session lasts; the expiry of a code that has none of its own.
    pub max_session: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            devices_per_code: 1,
            idle_timeout: Some(Duration::from_secs(30 * 60)),
            max_session: Duration::from_secs(24 * 60 * 60),
        }
    }
}

impl Policy {
    fn device_limit(&self) -> usize {
        usize::try_from(self.devices_per_code.max(1)).unwrap_or(usize::MAX)
    }
}

/// What a code source (the backend or the local store) granted for a code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub code: AccessCode,
    /// What the source believes is left. It may not know yet about bytes this gateway counted
    /// and has not reported.
    pub remaining_bytes: u64,
    /// The code's own expiry; `None`: the code does not expire.
    pub expires_at: Option<Millis>,
    /// The backend account id of the consumer who signed in with the code (the portal
    /// checked the account before the code); `None`: no one signed in.
    pub consumer: Option<String>,
    /// Another backend account's code: its expiry is not known (`expires_at` is `None`), so
    /// the shell asks the backend about it again while its session lasts
    /// ([`Core::other_account_codes`]).
    pub other_account: bool,
}

/// Why a device lost access, or why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The session's quota is used up (ends the session).
    QuotaUsed,
    /// The session reached its expiry (ends the session).
    Expired,
    /// The device had no traffic for longer than the idle timeout.
    Idle,
    /// The operator kicked the device.
    Kicked,
    /// The code was revoked (ends the session).
    CodeRevoked,
    /// The device's MAC or IP now belongs to another binding: a new IP from DHCP, the MAC
    /// entered another code, its IP went to another MAC, a newer device took its place on a
    /// code at its device limit, or the device no longer uses a learned address.
    Moved,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::QuotaUsed => "quota used",
            EndReason::Expired => "expired",
            EndReason::Idle => "idle",
            EndReason::Kicked => "kicked",
            EndReason::CodeRevoked => "code revoked",
            EndReason::Moved => "moved",
        }
    }

    /// The reason [`EndReason::as_str`] wrote (in the usage ledger, say).
    pub fn parse(text: &str) -> Option<EndReason> {
        [
            EndReason::QuotaUsed,
            EndReason::Expired,
            EndReason::Idle,
            EndReason::Kicked,
            EndReason::CodeRevoked,
            EndReason::Moved,
        ]
        .into_iter()
        .find(|reason| reason.as_str() == text)
    }

    /// For the reasons that end a session for good: how a later entry of the code is refused.
    fn refusal(self) -> Option<Refusal> {
        match self {
            EndReason::QuotaUsed => Some(Refusal::UsedUp),
            EndReason::Expired => Some(Refusal::Expired),
            EndReason::CodeRevoked => Some(Refusal::Revoked),
            EndReason::Idle | EndReason::Kicked | EndReason::Moved => None,
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the shell must do. Actions are in order: carry them out in that order (a device can
/// be revoked and allowed again in one answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Let this client through until `until` (the firewall sets a kernel timeout of
    /// `until - now`, so access ends at expiry even if the daemon is dead). An `Allow` for a
    /// client already allowed replaces its deadline.
    Allow { client: Client, until: Millis },
    /// Stop this client now.
    Revoke { client: Client, reason: EndReason },
    /// A session ended for good (quota used, expired, code revoked): its final usage for the
    /// ledger or the local store. Emitted exactly once per session.
    SessionEnded {
        code: AccessCode,
        /// When the session began: with the code, the session's id in the ledger.
        started_at: Millis,
        reason: EndReason,
        used_bytes: u64,
        /// Of `used_bytes`, what its devices sent (the rest they received).
        up_bytes: u64,
        /// The session's consumer (see [`Grant::consumer`]).
        consumer: Option<String>,
    },
}

/// Billable bytes of one client, each direction apart: what the kernel counted between two
/// readings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Sent by the client, forwarded to the WAN.
    pub up: u64,
    /// Forwarded from the WAN to the client.
    pub down: u64,
}

impl Usage {
    pub fn total(self) -> u64 {
        self.up.saturating_add(self.down)
    }

    /// The split of `total` bytes of which `up` were sent: the core keeps a total and the
    /// upload, the ledger and the pages both directions.
    pub fn of_total(total: u64, up: u64) -> Usage {
        Usage {
            up,
            down: total.saturating_sub(up),
        }
    }
}

/// The session of one online device, for the portal's status page and RFC 8908 API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientStatus {
    pub code: AccessCode,
    pub mac: Mac,
    /// What is left of the session's quota (shared by all its devices).
    pub bytes_left: u64,
    /// What the whole session (all its devices) has used.
    pub used_bytes: u64,
    pub expires_at: Millis,
    /// False when the session ends at `session.max_duration` only: the code does not expire
    /// (or, for another account's code, its expiry is unknown).
    pub code_expires: bool,
    /// Another account's code: it may expire at any time (see [`Grant::other_account`]).
    pub other_account: bool,
}

/// One device of a session, for `clients --json` and `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceView {
    /// The address it logged in with.
    pub client: Client,
    /// Its other addresses, learned from the neighbour table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<IpAddr>,
    /// When this device joined the session.
    pub since: Millis,
    /// Its last traffic (or when it joined or last entered the code).
    pub last_active: Millis,
    /// Bytes this device used in this session.
    pub used_bytes: u64,
    /// Of those, what it sent.
    pub up_bytes: u64,
}

/// One live session, for `clients --json` and `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    pub code: AccessCode,
    pub started_at: Millis,
    pub devices: Vec<DeviceView>,
    pub quota_bytes: u64,
    /// All bytes of the session, including those of devices no longer in it.
    pub used_bytes: u64,
    /// Of those, what its devices sent.
    pub up_bytes: u64,
    pub expires_at: Millis,
    /// The backend account the session counts for, if a consumer signed in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
}

/// A session's kernel quota as the core wants it (see `Firewall::set_quota`): the devices
/// that count against it, its size, and what the session has used so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedQuota {
    pub code: AccessCode,
    /// Sorted.
    pub clients: Vec<Client>,
    pub limit_bytes: u64,
    pub used_bytes: u64,
}

/// The core's durable state; the shell writes it to disk (temp file, fsync, rename) after
/// changes so sessions survive a restart. Fields added later must be `#[serde(default)]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    sessions: Vec<SavedSession>,
    ended: Vec<SavedEnded>,
    unattributed_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SavedSession {
    code: AccessCode,
    #[serde(flatten)]
    session: Session,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SavedEnded {
    code: AccessCode,
    #[serde(flatten)]
    ended: Ended,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    /// Invariant outside a call: `used_bytes < quota_bytes` (reaching the quota ends it).
    quota_bytes: u64,
    used_bytes: u64,
    /// Of `used_bytes`, what the devices sent (so `used_bytes - up_bytes` they received).
    #[serde(default)]
    up_bytes: u64,
    /// When the code was first accepted.
    #[serde(default)]
    started_at: Millis,
    /// When access ends: the code's expiry, capped at first acceptance + `max_session`.
    expires_at: Millis,
    /// The code's own expiry as its source last stated it (`None`: never). Unlike
    /// `expires_at` it is not capped by `max_session`: after the cap the source still grants
    /// the code, so it tells how long the code must be remembered once the session ends.
    code_expires_at: Option<Millis>,
    devices: Vec<Device>,
    /// The consumer's account id, fixed when the session starts (see the module
    /// documentation); left out of the snapshot when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    consumer: Option<String>,
    /// See [`Grant::other_account`]; fixed when the session starts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    other_account: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Device {
    /// The address it logged in with; it stays until the device leaves the session.
    client: Client,
    /// Its other addresses (see [`Core::learn_addresses`]), at most
    /// [`MAX_ADDRESSES_PER_DEVICE`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    also: Vec<IpAddr>,
    since: Millis,
    last_active: Millis,
    used_bytes: u64,
    #[serde(default)]
    up_bytes: u64,
}

impl Device {
    /// Every address of the device as a client of the firewall, the one it logged in with
    /// first.
    fn clients(&self) -> impl Iterator<Item = Client> + '_ {
        let mac = self.client.mac;
        std::iter::once(self.client).chain(self.also.iter().map(move |&ip| Client { mac, ip }))
    }

    fn has_ip(&self, ip: IpAddr) -> bool {
        self.client.ip == ip || self.also.contains(&ip)
    }

    /// Revokes every address of the device.
    fn revoke(&self, reason: EndReason, actions: &mut Vec<Action>) {
        actions.extend(
            self.clients()
                .map(|client| Action::Revoke { client, reason }),
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Ended {
    refusal: Refusal,
    forget_at: Millis,
}

/// A session as the usage ledger last recorded it: what [`Core::rebuild`] starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub code: AccessCode,
    pub started_at: Millis,
    /// When the record was written.
    pub at: Millis,
    pub usage: Usage,
    /// How it ended, if it did.
    pub ended: Option<EndReason>,
    /// The session's consumer, as recorded.
    pub consumer: Option<String>,
}

/// The sessions of all codes on this gateway. See the module documentation.
#[derive(Debug, Clone)]
pub struct Core {
    policy: Policy,
    // BTreeMaps so that actions and views come out in a stable order.
    sessions: BTreeMap<AccessCode, Session>,
    ended: BTreeMap<AccessCode, Ended>,
    unattributed_bytes: u64,
    /// See [`Core::revision`].
    revision: u64,
}

/// The next [`Core::revision`], one count for every core of the process: a core put back
/// from a clone keeps the revision it had, and no later change anywhere reuses it.
static NEXT_REVISION: AtomicU64 = AtomicU64::new(1);

/// The earlier of two optional deadlines, `None` meaning never.
fn earliest(a: Option<Millis>, b: Option<Millis>) -> Option<Millis> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Core {
    pub fn new(policy: Policy) -> Self {
        Core {
            policy,
            sessions: BTreeMap::new(),
            ended: BTreeMap::new(),
            unattributed_bytes: 0,
            revision: NEXT_REVISION.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Names what the kernel should hold ([`Core::allowed`], and the devices of each of
    /// [`Core::wanted_quotas`]): two calls that return the same revision see the same. It
    /// changes with every call that returns actions, because those are the only ones that
    /// change it (the actions say how; the property tests check both).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Passes on the actions a call decided, noting a new [`Core::revision`] if there are
    /// any.
    fn decided(&mut self, actions: Vec<Action>) -> Vec<Action> {
        if !actions.is_empty() {
            self.revision = NEXT_REVISION.fetch_add(1, Ordering::Relaxed);
        }
        actions
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Bytes reported for clients that were in no session when their delta arrived.
    pub fn unattributed_bytes(&self) -> u64 {
        self.unattributed_bytes
    }

    /// A consumer entered a code the source granted, from `client`.
    ///
    /// Refused, changing nothing, when the code's session already ended for good, when the
    /// grant has no bytes left, or when the code (or its session) is expired at `now`.
    ///
    /// Re-entering a code that has a session keeps the session's used bytes and never raises
    /// its quota: the new quota is `used + min(quota - used, grant.remaining_bytes)`. The
    /// source's figure is `original - reported`, and the ledger reports only bytes counted
    /// here, so it is normally at least `quota - used` and the session's own figure stands
    /// (taking the source's would hand back the bytes used but not yet reported). It is lower
    /// only when the code was also used elsewhere, and then the lower one is right. As
    /// `used_bytes` is never reset, the bytes counted so far are reported once, in this
    /// session's `SessionEnded`, never again by a fresh session. The expiry likewise only
    /// moves earlier; if it does, the other devices are allowed again with the new deadline.
    ///
    /// A new session takes the grant's consumer. Re-entering the code with a consumer that
    /// is not the session's (another account, or one on a session that began without) is
    /// refused ([`Refusal::OtherAccount`]); re-entering without one is not.
    pub fn accept_code(
        &mut self,
        client: Client,
        grant: Grant,
        now: Millis,
    ) -> Result<Vec<Action>, Refusal> {
        let Grant {
            code,
            remaining_bytes,
            expires_at: code_expires_at,
            consumer,
            other_account,
        } = grant;
        if let Some(ended) = self.ended.get(&code) {
            return Err(ended.refusal);
        }
        // The backend answers ok for a code with nothing left: refusing it is our job.
        if remaining_bytes == 0 {
            return Err(Refusal::UsedUp);
        }
        if code_expires_at.is_some_and(|at| at <= now) {
            return Err(Refusal::Expired);
        }
        let capped = |deadline: Millis| code_expires_at.map_or(deadline, |at| at.min(deadline));
        match self.sessions.get(&code) {
            // Expired but not yet ticked: `tick` ends it and reports its usage; refusing here
            // leaves that to it.
            Some(session) if session.expires_at <= now => return Err(Refusal::Expired),
            // Only with a zero `max_session`.
            None if capped(now.plus(self.policy.max_session)) <= now => {
                return Err(Refusal::Expired);
            }
            Some(session) if consumer.is_some() && consumer != session.consumer => {
                return Err(Refusal::OtherAccount);
            }
            _ => {}
        }

        // Accepted: nothing below refuses.
        let mut actions = Vec::new();
        self.unbind_others(client, &code, &mut actions);
        let limit = self.policy.device_limit();
        let session = self.sessions.entry(code).or_insert_with(|| Session {
            quota_bytes: remaining_bytes,
            used_bytes: 0,
            up_bytes: 0,
            started_at: now,
            expires_at: capped(now.plus(self.policy.max_session)),
            code_expires_at,
            devices: Vec::new(),
            consumer,
            other_account,
        });
        let left = session
            .quota_bytes
            .saturating_sub(session.used_bytes)
            .min(remaining_bytes);
        session.quota_bytes = session.used_bytes.saturating_add(left);
        session.code_expires_at = earliest(session.code_expires_at, code_expires_at);
        let expires_at = capped(session.expires_at);
        let deadline_moved = expires_at != session.expires_at;
        session.expires_at = expires_at;

        if let Some(device) = session
            .devices
            .iter_mut()
            .find(|device| device.client.mac == client.mac)
        {
            // The same device again (its IP already updated by `unbind_others`): the person
            // is at the portal, so it counts as activity.
            device.last_active = now;
        } else {
            // At the limit the device active least recently makes room: a phone that
            // re-enters its code with a new randomised MAC moves its session instead of
            // being refused.
            while session.devices.len() >= limit {
                let Some(oldest) = session
                    .devices
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, device)| (device.last_active, device.since, device.client))
                    .map(|(index, _)| index)
                else {
                    break;
                };
                let gone = session.devices.remove(oldest);
                gone.revoke(EndReason::Moved, &mut actions);
            }
            session.devices.push(Device {
                client,
                also: Vec::new(),
                since: now,
                last_active: now,
                used_bytes: 0,
                up_bytes: 0,
            });
        }
        if deadline_moved {
            // The kernel's timeouts of the other devices must shrink too.
            for other in session.devices.iter().flat_map(Device::clients) {
                if other != client {
                    actions.push(Action::Allow {
                        client: other,
                        until: expires_at,
                    });
                }
            }
        }
        actions.push(Action::Allow {
            client,
            until: expires_at,
        });
        Ok(self.decided(actions))
    }

    /// Before `client` joins the session of `code`: every other device holding its MAC or its
    /// IP is revoked (`Moved`) and leaves its session. A device with the same MAC in the
    /// session of `code` itself stays (its bytes and `since` are kept); only its old IP is
    /// revoked (a DHCP renewal).
    fn unbind_others(&mut self, client: Client, code: &AccessCode, actions: &mut Vec<Action>) {
        for (session_code, session) in &mut self.sessions {
            let own = session_code == code;
            session.devices.retain_mut(|device| {
                let same_mac = device.client.mac == client.mac;
                if !same_mac && !device.has_ip(client.ip) {
                    return true;
                }
                if own && same_mac {
                    if device.client.ip != client.ip {
                        actions.push(Action::Revoke {
                            client: device.client,
                            reason: EndReason::Moved,
                        });
                        device.client = client;
                    }
                    // The address it logs in with is no longer one of its others; they
                    // stay (the firewall already lets them through).
                    device.also.retain(|&ip| ip != client.ip);
                    return true;
                }
                if !same_mac && device.also.contains(&client.ip) {
                    // Another device's learned address went to this MAC: only that address
                    // leaves it.
                    actions.push(Action::Revoke {
                        client: Client {
                            mac: device.client.mac,
                            ip: client.ip,
                        },
                        reason: EndReason::Moved,
                    });
                    device.also.retain(|&ip| ip != client.ip);
                    return true;
                }
                device.revoke(EndReason::Moved, actions);
                false
            });
        }
    }

    /// Byte deltas per client since the last call. A delta of a client in no session is
    /// added to [`Core::unattributed_bytes`]. A session that reaches
    /// its quota ends at once: all its devices revoked, then `SessionEnded`.
    pub fn record_usage(&mut self, deltas: &[(Client, Usage)], now: Millis) -> Vec<Action> {
        let mut actions = Vec::new();
        if deltas.is_empty() {
            return actions;
        }
        // Built once per call: hundreds of clients times hundreds of deltas every second is
        // too many scans for a Pi.
        let owners: HashMap<Client, AccessCode> = self
            .sessions
            .iter()
            .flat_map(|(code, session)| {
                session
                    .devices
                    .iter()
                    .flat_map(Device::clients)
                    .map(move |client| (client, code.clone()))
            })
            .collect();
        for &(client, usage) in deltas {
            let delta = usage.total();
            // A session that ended earlier in this call is gone from `sessions`, so later
            // deltas of its devices are unattributed, like those of any client not allowed.
            let found = owners.get(&client).and_then(|code| {
                let session = self.sessions.get_mut(code)?;
                let device = session
                    .devices
                    .iter_mut()
                    .find(|d| d.client.mac == client.mac && d.has_ip(client.ip))?;
                device.used_bytes = device.used_bytes.saturating_add(delta);
                device.up_bytes = device.up_bytes.saturating_add(usage.up);
                if delta > 0 {
                    device.last_active = now;
                }
                session.used_bytes = session.used_bytes.saturating_add(delta);
                session.up_bytes = session.up_bytes.saturating_add(usage.up);
                Some((code, session.used_bytes >= session.quota_bytes))
            });
            match found {
                None => self.unattributed_bytes = self.unattributed_bytes.saturating_add(delta),
                Some((code, true)) => {
                    self.end_session(code, EndReason::QuotaUsed, now, &mut actions);
                }
                Some((_, false)) => {}
            }
        }
        self.decided(actions)
    }

    /// Expiry and idle checks; call about once a second, after `record_usage`. Ends sessions
    /// at their expiry, revokes devices idle for longer than the idle timeout (their session
    /// stays), and forgets ended codes whose time is up.
    pub fn tick(&mut self, now: Millis) -> Vec<Action> {
        let mut actions = Vec::new();
        self.ended.retain(|_, ended| ended.forget_at > now);
        let expired: Vec<AccessCode> = self
            .sessions
            .iter()
            .filter(|(_, session)| session.expires_at <= now)
            .map(|(code, _)| code.clone())
            .collect();
        for code in &expired {
            self.end_session(code, EndReason::Expired, now, &mut actions);
        }
        if let Some(timeout) = self.policy.idle_timeout {
            for session in self.sessions.values_mut() {
                session.devices.retain(|device| {
                    let idle = device.last_active.until(now) > timeout;
                    if idle {
                        device.revoke(EndReason::Idle, &mut actions);
                    }
                    !idle
                });
            }
        }
        self.decided(actions)
    }

    /// The operator kicks a device: it is revoked now. Its session stays, so the consumer may
    /// enter the code again.
    pub fn kick(&mut self, mac: Mac, _now: Millis) -> Vec<Action> {
        let mut actions = Vec::new();
        for session in self.sessions.values_mut() {
            session.devices.retain(|device| {
                let kicked = device.client.mac == mac;
                if kicked {
                    device.revoke(EndReason::Kicked, &mut actions);
                }
                !kicked
            });
        }
        self.decided(actions)
    }

    /// The kernel's hard stop for the session of `code` is used up: it drops the session's
    /// traffic from now on, so the session ends as used up. Its bytes stay what the counters
    /// gave: the packet that would have gone past the quota was dropped, never forwarded, so
    /// never billed, and the session's `used_bytes` may end a packet short of its quota.
    pub fn quota_reached(&mut self, code: &AccessCode, now: Millis) -> Vec<Action> {
        let mut actions = Vec::new();
        self.end_session(code, EndReason::QuotaUsed, now, &mut actions);
        self.decided(actions)
    }

    /// After a restart, the usage ledger may hold more for a session than the restored
    /// state plus the kernel's counters (the counters were lost, by a reboot say, after the
    /// ledger was last written). The session's bytes become at least the ledger's totals,
    /// never their sum, so nothing is counted twice; a session that reaches its quota so ends.
    pub fn raise_usage(
        &mut self,
        code: &AccessCode,
        started_at: Millis,
        at_least: Usage,
        now: Millis,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(session) = self
            .sessions
            .get_mut(code)
            .filter(|s| s.started_at == started_at)
        else {
            return actions;
        };
        let down = Usage::of_total(session.used_bytes, session.up_bytes).down;
        session.up_bytes = session.up_bytes.max(at_least.up);
        session.used_bytes = session.up_bytes.saturating_add(down.max(at_least.down));
        if session.used_bytes >= session.quota_bytes {
            self.end_session(code, EndReason::QuotaUsed, now, &mut actions);
        }
        self.decided(actions)
    }

    /// The code was revoked (by the operator or the backend): every device out, the session
    /// ended for good, the code refused from now on (for [`REMEMBER_ENDED`]; the source is
    /// expected to refuse it itself by then). A code with no session is remembered as revoked
    /// all the same.
    pub fn revoke_code(&mut self, code: &AccessCode, now: Millis) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.sessions.contains_key(code) {
            self.end_session(code, EndReason::CodeRevoked, now, &mut actions);
        } else {
            let until = now.plus(REMEMBER_ENDED);
            let forget_at = self
                .ended
                .get(code)
                .map_or(until, |ended| ended.forget_at.min(until));
            self.ended.insert(
                code.clone(),
                Ended {
                    refusal: Refusal::Revoked,
                    forget_at,
                },
            );
        }
        self.decided(actions)
    }

    /// The codes of live sessions of other accounts' codes, whose expiry is unknown: the
    /// shell asks the backend about each again while its session lasts.
    pub fn other_account_codes(&self) -> Vec<AccessCode> {
        self.sessions
            .iter()
            .filter(|(_, session)| session.other_account)
            .map(|(code, _)| code.clone())
            .collect()
    }

    /// The source says `code` has expired (learned by asking again, for a code whose expiry
    /// it does not tell): its session ends now as expired, its usage reported once, the
    /// code refused from now on. Read the counters first.
    pub fn code_expired(&mut self, code: &AccessCode, now: Millis) -> Vec<Action> {
        let mut actions = Vec::new();
        self.end_session(code, EndReason::Expired, now, &mut actions);
        self.decided(actions)
    }

    /// The source says `code` has `left` bytes left: the session's quota never grows, and
    /// shrinks to `used + left` when that is lower (the code was used elsewhere too); a
    /// session with nothing left ends as used up. Read the counters first.
    pub fn code_left(&mut self, code: &AccessCode, left: u64, now: Millis) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(session) = self.sessions.get_mut(code) else {
            return actions;
        };
        let quota = session.used_bytes.saturating_add(left);
        session.quota_bytes = session.quota_bytes.min(quota);
        if session.used_bytes >= session.quota_bytes {
            self.end_session(code, EndReason::QuotaUsed, now, &mut actions);
        }
        self.decided(actions)
    }

    /// Every device of the session of `code` is logged out (`Kicked`); the session stays, so
    /// its code may be entered again. For a code that cannot be checked any more.
    pub fn release_devices(&mut self, code: &AccessCode) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Some(session) = self.sessions.get_mut(code) {
            for device in session.devices.drain(..) {
                device.revoke(EndReason::Kicked, &mut actions);
            }
        }
        self.decided(actions)
    }

    /// Ends the session of `code`: revokes its devices, reports its usage once, and remembers
    /// the code as ended.
    fn end_session(
        &mut self,
        code: &AccessCode,
        reason: EndReason,
        now: Millis,
        actions: &mut Vec<Action>,
    ) {
        let Some(session) = self.sessions.remove(code) else {
            return;
        };
        for device in &session.devices {
            device.revoke(reason, actions);
        }
        actions.push(Action::SessionEnded {
            code: code.clone(),
            started_at: session.started_at,
            reason,
            used_bytes: session.used_bytes,
            up_bytes: session.up_bytes,
            consumer: session.consumer.clone(),
        });
        if let Some(refusal) = reason.refusal() {
            let forget_at = earliest(session.code_expires_at, Some(now.plus(REMEMBER_ENDED)))
                .unwrap_or_else(|| now.plus(REMEMBER_ENDED));
            self.ended
                .insert(code.clone(), Ended { refusal, forget_at });
        }
    }

    /// What the neighbour table says each MAC on the LAN uses now (`seen`: every entry the
    /// shell found, link-local and multicast addresses left out), at `now`. Every online
    /// device gets the addresses its MAC uses that no other device holds (`Allow`, until its
    /// session's expiry), up to [`MAX_ADDRESSES_PER_DEVICE`], IPv4 only if it has none yet; a learned address its MAC no
    /// longer uses (a retired privacy address, an address gone to another MAC) leaves it
    /// (`Revoke`). The address a device logged in with stays whatever the table says: the
    /// portal bound it. Read the counters before carrying out the revokes.
    pub fn learn_addresses(&mut self, seen: &[Client], _now: Millis) -> Vec<Action> {
        let mut actions = Vec::new();
        // By MAC, then address (one sorted list rather than a list per MAC: this runs every
        // tick over the whole table).
        let mut seen = seen.to_vec();
        seen.sort();
        seen.dedup();
        let used_by = |mac: Mac| {
            let from = seen.partition_point(|client| client.mac < mac);
            let to = seen.partition_point(|client| client.mac <= mac);
            &seen[from..to]
        };
        // Who holds each address now: an address is learned only if free.
        let mut held: HashMap<IpAddr, Mac> = self
            .sessions
            .values()
            .flat_map(|session| &session.devices)
            .flat_map(|device| device.clients())
            .map(|client| (client.ip, client.mac))
            .collect();
        for session in self.sessions.values_mut() {
            let until = session.expires_at;
            for device in &mut session.devices {
                let mac = device.client.mac;
                let used = used_by(mac);
                device.also.retain(|ip| {
                    let keep = used.iter().any(|client| client.ip == *ip);
                    if !keep {
                        held.remove(ip);
                        actions.push(Action::Revoke {
                            client: Client { mac, ip: *ip },
                            reason: EndReason::Moved,
                        });
                    }
                    keep
                });
                for &Client { ip, .. } in used {
                    if device.also.len() >= MAX_ADDRESSES_PER_DEVICE {
                        break;
                    }
                    // One IPv4 address per device: the one it logged in with, or the one
                    // the table names after an IPv6 login. Another IPv4 address of the same
                    // MAC stays captive, so that copying an online device's MAC onto
                    // another device does not get it through over IPv4.
                    let second_ipv4 = ip.is_ipv4() && device.clients().any(|c| c.ip.is_ipv4());
                    if second_ipv4 || held.contains_key(&ip) {
                        continue;
                    }
                    held.insert(ip, mac);
                    device.also.push(ip);
                    actions.push(Action::Allow {
                        client: Client { mac, ip },
                        until,
                    });
                }
            }
        }
        self.decided(actions)
    }

    /// Every address of every online device, each with a number for its session (the same
    /// number, the same session; valid until the next change).
    pub fn online_clients(&self) -> impl Iterator<Item = (usize, Client)> + '_ {
        self.sessions
            .values()
            .enumerate()
            .flat_map(|(number, session)| {
                session
                    .devices
                    .iter()
                    .flat_map(Device::clients)
                    .map(move |client| (number, client))
            })
    }

    /// The session of the device at `ip`, if it is online at `now`.
    pub fn status_of(&self, ip: IpAddr, now: Millis) -> Option<ClientStatus> {
        self.sessions
            .iter()
            .filter(|(_, session)| {
                session.expires_at > now && session.used_bytes < session.quota_bytes
            })
            .find_map(|(code, session)| {
                let device = session.devices.iter().find(|d| d.has_ip(ip))?;
                Some(ClientStatus {
                    code: code.clone(),
                    mac: device.client.mac,
                    bytes_left: session.quota_bytes.saturating_sub(session.used_bytes),
                    used_bytes: session.used_bytes,
                    expires_at: session.expires_at,
                    code_expires: session.code_expires_at.is_some(),
                    other_account: session.other_account,
                })
            })
    }

    /// How many devices are online: a phone with an IPv4 address and two IPv6 ones is one
    /// device (three of [`Core::allowed`]'s clients).
    pub fn online_devices(&self) -> usize {
        self.sessions
            .values()
            .map(|session| session.devices.len())
            .sum()
    }

    /// Every online device with its access deadline, sorted by client: what the kernel's set
    /// should hold (for reconciling with it).
    pub fn allowed(&self) -> Vec<(Client, Millis)> {
        let mut allowed: Vec<(Client, Millis)> = self
            .sessions
            .values()
            .flat_map(|session| {
                session
                    .devices
                    .iter()
                    .flat_map(Device::clients)
                    .map(|client| (client, session.expires_at))
            })
            .collect();
        allowed.sort();
        allowed
    }

    /// The earliest deadline of [`Core::allowed`] (`None` without devices), without
    /// building it.
    pub fn next_expiry(&self) -> Option<Millis> {
        self.sessions
            .values()
            .filter(|session| !session.devices.is_empty())
            .map(|session| session.expires_at)
            .min()
    }

    /// The kernel quotas the sessions want: one for each session with devices, by code.
    /// The kernel stops the session at its quota by itself, between counter readings and
    /// while the daemon is down.
    pub fn wanted_quotas(&self) -> Vec<WantedQuota> {
        self.sessions
            .iter()
            .filter(|(_, session)| !session.devices.is_empty())
            .map(|(code, session)| {
                let mut clients: Vec<Client> =
                    session.devices.iter().flat_map(Device::clients).collect();
                clients.sort();
                WantedQuota {
                    code: code.clone(),
                    clients,
                    limit_bytes: session.quota_bytes,
                    used_bytes: session.used_bytes,
                }
            })
            .collect()
    }

    /// The sessions with devices and less than `margin` bytes left. The kernel drops the
    /// packet that would pass a quota, so the counters stop just short of it and the core
    /// cannot see such a session end by itself: only these can have a used-up kernel quota,
    /// so only these need the kernel asked (`margin`: the largest packet).
    pub fn near_quota(&self, margin: u64) -> Vec<AccessCode> {
        self.sessions
            .iter()
            .filter(|(_, s)| {
                !s.devices.is_empty() && s.quota_bytes.saturating_sub(s.used_bytes) < margin
            })
            .map(|(code, _)| code.clone())
            .collect()
    }

    /// The live sessions, by code.
    pub fn sessions(&self) -> Vec<SessionView> {
        self.sessions
            .iter()
            .map(|(code, session)| SessionView {
                code: code.clone(),
                started_at: session.started_at,
                devices: session
                    .devices
                    .iter()
                    .map(|device| DeviceView {
                        client: device.client,
                        also: device.also.clone(),
                        since: device.since,
                        last_active: device.last_active,
                        used_bytes: device.used_bytes,
                        up_bytes: device.up_bytes,
                    })
                    .collect(),
                quota_bytes: session.quota_bytes,
                used_bytes: session.used_bytes,
                up_bytes: session.up_bytes,
                expires_at: session.expires_at,
                consumer: session.consumer.clone(),
            })
            .collect()
    }

    /// The durable state.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            sessions: self
                .sessions
                .iter()
                .map(|(code, session)| SavedSession {
                    code: code.clone(),
                    session: session.clone(),
                })
                .collect(),
            ended: self
                .ended
                .iter()
                .map(|(code, ended)| SavedEnded {
                    code: code.clone(),
                    ended: *ended,
                })
                .collect(),
            unattributed_bytes: self.unattributed_bytes,
        }
    }

    /// The core from the usage ledger alone, when the saved state is lost (a damaged or
    /// missing `sessions.json`), from each session's latest record, oldest first. The ledger
    /// is the record of what was used, so a code whose session ended for good (quota used,
    /// expired, revoked) is refused as before, and a live session comes back with its bytes:
    /// the code entered again continues it, so its bytes add up, never start over. What the
    /// ledger does not hold comes back as loosely as is safe: no devices (they enter their
    /// code again), the expiry the session had at most (start + `max_session`; an earlier
    /// code expiry comes with the next entry of the code), and no quota of its own, so the
    /// next entry's remaining figure from the code source sets it (`used + remaining`).
    pub fn rebuild(policy: Policy, recorded: &[Recorded], now: Millis) -> Core {
        let mut core = Core::new(policy);
        for record in recorded {
            core.sessions.remove(&record.code);
            core.ended.remove(&record.code);
            match record.ended.map(|reason| reason.refusal()) {
                Some(Some(refusal)) => {
                    let forget_at = record.at.plus(REMEMBER_ENDED);
                    if forget_at > now {
                        core.ended
                            .insert(record.code.clone(), Ended { refusal, forget_at });
                    }
                }
                // Ended without a refusal: nothing to remember, as when it ended.
                Some(None) => {}
                None => {
                    let expires_at = record.started_at.plus(core.policy.max_session);
                    core.sessions.insert(
                        record.code.clone(),
                        Session {
                            quota_bytes: u64::MAX,
                            used_bytes: record.usage.total(),
                            up_bytes: record.usage.up,
                            started_at: record.started_at,
                            expires_at,
                            code_expires_at: None,
                            devices: Vec::new(),
                            consumer: record.consumer.clone(),
                            other_account: false,
                        },
                    );
                }
            }
        }
        core
    }

    /// The core again from a snapshot, at `now`, under `policy` (which may have changed).
    ///
    /// The actions bring a firewall that still holds the snapshot's [`Core::allowed`] (the
    /// kernel set outlives the daemon) in step: sessions that expired while the daemon was
    /// down end (`Revoke` + `SessionEnded`), idle devices are revoked, and every device still
    /// valid is allowed again with its deadline. A damaged or hand-edited snapshot cannot make
    /// it panic: a device whose MAC or IP is already bound, or beyond the policy's device
    /// limit (the least recently active go first), is revoked (`Moved`); a second entry for a
    /// code merges its bytes into the first (whose consumer stays); a session at its quota
    /// ends.
    pub fn restore(policy: Policy, snapshot: Snapshot, now: Millis) -> (Self, Vec<Action>) {
        let mut core = Core::new(policy);
        core.unattributed_bytes = snapshot.unattributed_bytes;
        let mut actions = Vec::new();
        for SavedEnded { code, ended } in snapshot.ended {
            core.ended.entry(code).or_insert(ended);
        }
        let limit = core.policy.device_limit();
        let mut macs = HashSet::new();
        let mut ips = HashSet::new();
        for SavedSession { code, mut session } in snapshot.sessions {
            let devices = std::mem::take(&mut session.devices);
            core.ended.remove(&code);
            let kept = match core.sessions.entry(code) {
                Entry::Occupied(entry) => {
                    let kept = entry.into_mut();
                    kept.used_bytes = kept.used_bytes.saturating_add(session.used_bytes);
                    kept.up_bytes = kept.up_bytes.saturating_add(session.up_bytes);
                    kept
                }
                Entry::Vacant(entry) => entry.insert(session),
            };
            // Most recently active first, so the limit keeps those...
            let mut candidates: Vec<(usize, Device)> = devices.into_iter().enumerate().collect();
            candidates.sort_by_key(|(_, device)| Reverse((device.last_active, device.since)));
            let mut chosen = Vec::new();
            for (index, mut device) in candidates {
                let fits = kept.devices.len() + chosen.len() < limit
                    && !macs.contains(&device.client.mac)
                    && !ips.contains(&device.client.ip);
                if fits {
                    macs.insert(device.client.mac);
                    ips.insert(device.client.ip);
                    // A learned address already bound, or past the cap, leaves the device.
                    for ip in std::mem::take(&mut device.also) {
                        if device.also.len() < MAX_ADDRESSES_PER_DEVICE && ips.insert(ip) {
                            device.also.push(ip);
                        } else if ip != device.client.ip {
                            actions.push(Action::Revoke {
                                client: Client {
                                    mac: device.client.mac,
                                    ip,
                                },
                                reason: EndReason::Moved,
                            });
                        }
                    }
                    chosen.push((index, device));
                } else {
                    device.revoke(EndReason::Moved, &mut actions);
                }
            }
            // ...but kept in their saved order, so a restored core is the saved one.
            chosen.sort_by_key(|(index, _)| *index);
            kept.devices
                .extend(chosen.into_iter().map(|(_, device)| device));
        }
        let used_up: Vec<AccessCode> = core
            .sessions
            .iter()
            .filter(|(_, session)| session.used_bytes >= session.quota_bytes)
            .map(|(code, _)| code.clone())
            .collect();
        for code in &used_up {
            core.end_session(code, EndReason::QuotaUsed, now, &mut actions);
        }
        actions.extend(core.tick(now));
        actions.extend(
            core.allowed()
                .into_iter()
                .map(|(client, until)| Action::Allow { client, until }),
        );
        (core, actions)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use proptest::prelude::*;

    use super::*;

    const T0: Millis = Millis(1_700_000_000_000);
    const MB: u64 = 1 << 20;

    fn at(secs: u64) -> Millis {
        T0.plus(Duration::from_secs(secs))
    }

    fn code(n: usize) -> AccessCode {
        AccessCode::parse(["AAAA2222", "BBBB3333", "CCCC4444", "DDDD5555"][n]).unwrap()
    }

    fn mac(n: u8) -> Mac {
        Mac([2, 0, 0, 0, 0, n])
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 66, 0, n))
    }

    fn client(m: u8, i: u8) -> Client {
        Client {
            mac: mac(m),
            ip: ip(i),
        }
    }

    /// Addresses for the neighbour table: the IPv4 ones logins use, then IPv6 ones.
    fn any_ip(n: u8) -> IpAddr {
        if n < 5 {
            ip(n)
        } else {
            IpAddr::V6(format!("fd00:66::{n:x}").parse().unwrap())
        }
    }

    fn seen(pairs: &[(u8, u8)]) -> Vec<Client> {
        pairs
            .iter()
            .map(|&(m, n)| Client {
                mac: mac(m),
                ip: any_ip(n),
            })
            .collect()
    }

    fn grant(n: usize, remaining_bytes: u64, expires_at: Option<Millis>) -> Grant {
        Grant {
            code: code(n),
            remaining_bytes,
            expires_at,
            consumer: None,
            other_account: false,
        }
    }

    /// A code with 100 MB valid for 10 hours.
    fn good(n: usize) -> Grant {
        grant(n, 100 * MB, Some(at(10 * 3600)))
    }

    /// Rebuilt from the ledger's latest records: a session that ended for good keeps its
    /// code refused (until it would have been forgotten), a live one comes back with its
    /// bytes and is continued by the next entry of its code, a newer record of a code wins.
    #[test]
    fn a_core_rebuilt_from_the_ledger_keeps_what_was_used() {
        let rec =
            |n: usize, started: u64, written: u64, mb: u64, ended: Option<EndReason>| Recorded {
                code: code(n),
                started_at: at(started),
                at: at(written),
                usage: Usage {
                    up: MB,
                    down: (mb - 1) * MB,
                },
                ended,
                // Code 2's sessions were signed in to an account.
                consumer: (n == 2).then(|| "consumer-2".to_owned()),
            };
        let now = at(8 * 24 * 3600);
        let recorded = [
            // Ended longer ago than the core remembers ended codes.
            rec(3, 0, 0, 5, Some(EndReason::Expired)),
            rec(
                0,
                0,
                now.0.saturating_sub(T0.0) / 1000 - 60,
                100,
                Some(EndReason::QuotaUsed),
            ),
            rec(1, 10, 20, 30, None),
            // Ended, then entered again: the newer, live record stands.
            rec(2, 0, 30, 10, Some(EndReason::Idle)),
            rec(2, 40, 50, 7, None),
        ];
        let core = Core::rebuild(Policy::default(), &recorded, now);
        for (n, want) in [(0, Err(Refusal::UsedUp)), (3, Ok(()))] {
            let got = core
                .clone()
                .accept_code(client(9, 9), grant(n, 50 * MB, None), now);
            assert_eq!(got.map(|_| ()), want, "code {n}");
        }
        // Within the session's max_session of its start: the rebuilt session continues.
        let now = at(60);
        let mut core = Core::rebuild(Policy::default(), &recorded, now);
        core.accept_code(client(1, 1), grant(1, 20 * MB, None), now)
            .unwrap();
        let view = core.sessions();
        let of = |n: usize| view.iter().find(|s| s.code == code(n)).unwrap();
        assert_eq!(of(1).used_bytes, 30 * MB);
        assert_eq!(of(1).started_at, at(10));
        let left = core.status_of(ip(1), now).unwrap().bytes_left;
        assert_eq!(
            left,
            20 * MB,
            "used + left is what the code source says it has"
        );
        assert_eq!(of(2).used_bytes, 7 * MB);
        assert_eq!(view.len(), 2);
        // The rebuilt session still counts for its consumer.
        assert_eq!(of(1).consumer, None);
        assert_eq!(of(2).consumer.as_deref(), Some("consumer-2"));
        let other = Grant {
            consumer: Some("consumer-3".to_owned()),
            ..grant(2, 20 * MB, None)
        };
        assert_eq!(
            core.accept_code(client(2, 2), other, now),
            Err(Refusal::OtherAccount)
        );
    }

    fn allow(c: Client, until: Millis) -> Action {
        Action::Allow { client: c, until }
    }

    fn revoke(c: Client, reason: EndReason) -> Action {
        Action::Revoke { client: c, reason }
    }

    /// Code 0 accepted for `c` at `at(0)`: the session's expiry.
    fn session_until(core: &mut Core, c: Client) -> Millis {
        core.accept_code(c, good(0), at(0)).unwrap();
        session(core, 0).expires_at
    }

    /// The session of code `n`, started at `at(0)`, ended with `used_bytes`, all received.
    fn ended(n: usize, reason: EndReason, used_bytes: u64) -> Action {
        Action::SessionEnded {
            code: code(n),
            started_at: at(0),
            reason,
            used_bytes,
            up_bytes: 0,
            consumer: None,
        }
    }

    /// `bytes` of a client, a quarter of them sent.
    fn split(bytes: u64) -> Usage {
        Usage {
            up: bytes / 4,
            down: bytes - bytes / 4,
        }
    }

    /// `bytes` received by a client.
    fn down(bytes: u64) -> Usage {
        Usage { up: 0, down: bytes }
    }

    fn policy(devices_per_code: u32) -> Policy {
        Policy {
            devices_per_code,
            ..Policy::default()
        }
    }

    fn session(core: &Core, n: usize) -> SessionView {
        core.sessions()
            .into_iter()
            .find(|s| s.code == code(n))
            .unwrap()
    }

    /// Another account's code: asked again, its session shrinks to what the source says is
    /// left, ends as expired when the source says so, and its devices leave (the session
    /// stays) when it cannot be asked. Own codes are not asked about.
    #[test]
    fn another_accounts_code_follows_what_the_source_says_again() {
        let mut core = Core::new(Policy::default());
        let foreign = |n| Grant {
            other_account: true,
            ..grant(n, 100 * MB, None)
        };
        core.accept_code(client(1, 1), foreign(0), at(0)).unwrap();
        core.accept_code(client(2, 2), foreign(1), at(0)).unwrap();
        core.accept_code(client(3, 3), good(2), at(0)).unwrap();
        assert_eq!(core.other_account_codes(), vec![code(0), code(1)]);
        let status = core.status_of(ip(1), at(1)).unwrap();
        assert!(status.other_account && !status.code_expires);
        core.record_usage(&[(client(1, 1), down(30 * MB))], at(1));

        // Used elsewhere too: 50 MiB left for 70 here.
        assert!(core.code_left(&code(0), 50 * MB, at(2)).is_empty());
        assert_eq!(session(&core, 0).quota_bytes, 80 * MB);
        // Never raised.
        core.code_left(&code(0), 500 * MB, at(3));
        assert_eq!(session(&core, 0).quota_bytes, 80 * MB);
        // Nothing left: ends as used up.
        let actions = core.code_left(&code(0), 0, at(4));
        assert!(
            actions.iter().any(|a| matches!(
                a,
                Action::SessionEnded { reason: EndReason::QuotaUsed, used_bytes, .. } if *used_bytes == 30 * MB
            )),
            "{actions:?}"
        );

        // Cannot be asked: the devices leave, the session stays for the next entry.
        let actions = core.release_devices(&code(1));
        assert_eq!(
            actions,
            vec![Action::Revoke {
                client: client(2, 2),
                reason: EndReason::Kicked
            }]
        );
        assert!(session(&core, 1).devices.is_empty());
        core.accept_code(client(2, 2), foreign(1), at(5)).unwrap();

        // Expired: ends now, refused from now on.
        let actions = core.code_expired(&code(1), at(6));
        assert!(
            actions.iter().any(|a| matches!(
                a,
                Action::SessionEnded {
                    reason: EndReason::Expired,
                    ..
                }
            )),
            "{actions:?}"
        );
        assert_eq!(
            core.accept_code(client(2, 2), foreign(1), at(7)),
            Err(Refusal::Expired)
        );
        assert!(core.other_account_codes().is_empty());
        // The flag survives a restart.
        core.accept_code(client(4, 4), foreign(3), at(8)).unwrap();
        let (restored, _) = Core::restore(Policy::default(), core.snapshot(), at(9));
        assert_eq!(restored.other_account_codes(), vec![code(3)]);
    }

    #[test]
    fn policy_defaults() {
        let policy = Policy::default();
        assert_eq!(policy.devices_per_code, 1);
        assert_eq!(policy.idle_timeout, Some(Duration::from_secs(1800)));
        assert_eq!(policy.max_session, Duration::from_secs(86_400));
    }

    #[test]
    fn refusals_for_grants_with_nothing_left() {
        // (remaining bytes, expiry, max_session, expected)
        let cases = [
            (MB, None, Duration::from_secs(3600), Ok(at(3600))),
            (MB, Some(at(60)), Duration::from_secs(3600), Ok(at(60))),
            (MB, Some(at(7200)), Duration::from_secs(3600), Ok(at(3600))),
            (
                0,
                Some(at(60)),
                Duration::from_secs(3600),
                Err(Refusal::UsedUp),
            ),
            (
                MB,
                Some(at(0)),
                Duration::from_secs(3600),
                Err(Refusal::Expired),
            ),
            (
                1,
                Some(Millis(0)),
                Duration::from_secs(3600),
                Err(Refusal::Expired),
            ),
            (MB, None, Duration::ZERO, Err(Refusal::Expired)),
        ];
        for (remaining, expires, max_session, expected) in cases {
            let mut core = Core::new(Policy {
                max_session,
                ..Policy::default()
            });
            let got = core.accept_code(client(1, 1), grant(0, remaining, expires), at(0));
            let expected = expected.map(|until| vec![allow(client(1, 1), until)]);
            assert_eq!(got, expected, "{remaining} {expires:?} {max_session:?}");
            if got.is_err() {
                assert!(core.sessions().is_empty() && core.allowed().is_empty());
            }
        }
    }

    #[test]
    fn refusals_speak_to_consumers() {
        for refusal in [Refusal::UsedUp, Refusal::Expired, Refusal::Revoked] {
            let text = refusal.to_string();
            assert!(
                text.starts_with("This code") && text.ends_with('.'),
                "{text}"
            );
        }
        assert_eq!(EndReason::QuotaUsed.to_string(), "quota used");
        assert_eq!(
            serde_json::to_value(EndReason::CodeRevoked).unwrap(),
            "code_revoked"
        );
    }

    #[test]
    fn reentry_keeps_used_bytes_and_never_raises_the_quota() {
        // (first grant, bytes used, second grant's remaining, quota after, bytes left after)
        let cases = [
            // The backend has not heard of the 30 bytes yet: the session's own figure stands.
            (100, 30, 100, 100, 70),
            // The backend heard of 20 of them.
            (100, 30, 80, 100, 70),
            // Used elsewhere as well: the lower figure wins.
            (100, 30, 50, 80, 50),
            (100, 0, 1, 1, 1),
        ];
        for (first, used, second, quota, left) in cases {
            let mut core = Core::new(policy(2));
            core.accept_code(client(1, 1), grant(0, first, None), at(0))
                .unwrap();
            core.record_usage(&[(client(1, 1), down(used))], at(1));
            core.accept_code(client(2, 2), grant(0, second, None), at(2))
                .unwrap();
            let view = session(&core, 0);
            assert_eq!(
                (view.quota_bytes, view.used_bytes),
                (quota, used),
                "{first} {used} {second}"
            );
            let status = core.status_of(ip(2), at(2)).unwrap();
            assert_eq!(status.bytes_left, left);
        }
    }

    #[test]
    fn reentry_with_an_earlier_expiry_moves_every_deadline() {
        let mut core = Core::new(policy(2));
        core.accept_code(client(1, 1), good(0), at(0)).unwrap();
        let actions = core
            .accept_code(client(2, 2), grant(0, MB, Some(at(600))), at(1))
            .unwrap();
        assert_eq!(
            actions,
            [allow(client(1, 1), at(600)), allow(client(2, 2), at(600))]
        );
        // A later expiry never extends it.
        let actions = core.accept_code(client(2, 2), good(0), at(2)).unwrap();
        assert_eq!(actions, [allow(client(2, 2), at(600))]);
        assert_eq!(
            core.allowed(),
            [(client(1, 1), at(600)), (client(2, 2), at(600))]
        );
    }

    #[test]
    fn device_bindings() {
        struct Case {
            name: &'static str,
            /// (client, code) accepted first, in order.
            before: Vec<(Client, usize)>,
            then: (Client, usize),
            actions: Vec<Action>,
            allowed: Vec<Client>,
        }
        let until = at(10 * 3600);
        let cases = [
            Case {
                name: "same MAC and IP again is idempotent",
                before: vec![(client(1, 1), 0)],
                then: (client(1, 1), 0),
                actions: vec![allow(client(1, 1), until)],
                allowed: vec![client(1, 1)],
            },
            Case {
                name: "same MAC with a new IP (DHCP renewal)",
                before: vec![(client(1, 1), 0)],
                then: (client(1, 2), 0),
                actions: vec![
                    revoke(client(1, 1), EndReason::Moved),
                    allow(client(1, 2), until),
                ],
                allowed: vec![client(1, 2)],
            },
            Case {
                name: "a MAC entering another code leaves its old session",
                before: vec![(client(1, 1), 0)],
                then: (client(1, 1), 1),
                actions: vec![
                    revoke(client(1, 1), EndReason::Moved),
                    allow(client(1, 1), until),
                ],
                allowed: vec![client(1, 1)],
            },
            Case {
                name: "an IP taken over by another MAC",
                before: vec![(client(1, 1), 0)],
                then: (client(2, 1), 1),
                actions: vec![
                    revoke(client(1, 1), EndReason::Moved),
                    allow(client(2, 1), until),
                ],
                allowed: vec![client(2, 1)],
            },
            Case {
                name: "a new (randomised) MAC at the limit moves the session",
                before: vec![(client(1, 1), 0)],
                then: (client(2, 2), 0),
                actions: vec![
                    revoke(client(1, 1), EndReason::Moved),
                    allow(client(2, 2), until),
                ],
                allowed: vec![client(2, 2)],
            },
            Case {
                name: "another code's device is left alone",
                before: vec![(client(1, 1), 0)],
                then: (client(2, 2), 1),
                actions: vec![allow(client(2, 2), until)],
                allowed: vec![client(1, 1), client(2, 2)],
            },
        ];
        for case in cases {
            let mut core = Core::new(Policy::default());
            for (n, (c, code)) in case.before.into_iter().enumerate() {
                core.accept_code(c, good(code), at(n as u64)).unwrap();
            }
            let (c, code) = case.then;
            let actions = core.accept_code(c, good(code), at(100)).unwrap();
            assert_eq!(actions, case.actions, "{}", case.name);
            let allowed: Vec<Client> = core.allowed().into_iter().map(|(c, _)| c).collect();
            assert_eq!(allowed, case.allowed, "{}", case.name);
        }
    }

    #[test]
    fn a_device_keeps_its_bytes_across_a_new_ip() {
        let mut core = Core::new(Policy::default());
        core.accept_code(client(1, 1), good(0), at(0)).unwrap();
        core.record_usage(&[(client(1, 1), down(500))], at(5));
        core.accept_code(client(1, 2), good(0), at(10)).unwrap();
        let view = session(&core, 0);
        assert_eq!(view.used_bytes, 500);
        assert_eq!(
            view.devices,
            [DeviceView {
                client: client(1, 2),
                also: Vec::new(),
                since: at(0),
                last_active: at(10),
                used_bytes: 500,
                up_bytes: 0,
            }]
        );
    }

    #[test]
    fn a_device_learns_its_other_addresses_and_loses_those_it_stops_using() {
        let mut core = Core::new(Policy {
            devices_per_code: 2,
            ..Policy::default()
        });
        let phone = client(1, 1);
        let until = session_until(&mut core, phone);
        let v6 = |n: u8| Client {
            mac: mac(1),
            ip: any_ip(n),
        };
        // Its stable and privacy IPv6 addresses; a laptop's address; link order mixed.
        let actions = core.learn_addresses(&seen(&[(2, 9), (1, 6), (1, 1), (1, 5)]), at(1));
        assert_eq!(actions, [allow(v6(5), until), allow(v6(6), until)]);
        assert_eq!(session(&core, 0).devices[0].also, [any_ip(5), any_ip(6)]);
        // Three addresses, one device online (the provider's `status`).
        assert_eq!((core.allowed().len(), core.online_devices()), (3, 1));

        // Bytes over IPv6 are the device's; the portal finds it by any of its addresses.
        core.record_usage(&[(v6(6), down(700)), (phone, down(300))], at(2));
        let view = session(&core, 0);
        assert_eq!(
            (view.used_bytes, view.devices[0].used_bytes),
            (1_000, 1_000)
        );
        assert_eq!(
            core.status_of(any_ip(6), at(2)).map(|s| s.mac),
            Some(mac(1))
        );
        assert_eq!(core.unattributed_bytes(), 0);

        // The privacy address retires, a new one comes; the login address stays even
        // though the table no longer lists it.
        let actions = core.learn_addresses(&seen(&[(1, 5), (1, 7)]), at(3));
        assert_eq!(
            actions,
            [revoke(v6(6), EndReason::Moved), allow(v6(7), until)]
        );

        // Another device logging in with one of its addresses takes only that address.
        let laptop = Client {
            mac: mac(2),
            ip: any_ip(7),
        };
        let actions = core.accept_code(laptop, good(0), at(4)).unwrap();
        assert_eq!(actions[0], revoke(v6(7), EndReason::Moved));
        assert_eq!(session(&core, 0).devices[0].also, [any_ip(5)]);
        assert_eq!(core.online_devices(), 2);

        // A kick cuts every address of the device.
        let actions = core.kick(mac(1), at(5));
        assert_eq!(
            actions,
            [
                revoke(phone, EndReason::Kicked),
                revoke(v6(5), EndReason::Kicked)
            ]
        );
    }

    #[test]
    fn a_device_that_logged_in_over_ipv6_learns_one_ipv4_address() {
        let mut core = Core::new(Policy::default());
        let phone = Client {
            mac: mac(1),
            ip: any_ip(6),
        };
        let until = session_until(&mut core, phone);
        let actions = core.learn_addresses(&seen(&[(1, 2), (1, 3), (1, 7)]), at(1));
        assert_eq!(
            actions,
            [
                allow(client(1, 2), until),
                allow(
                    Client {
                        mac: mac(1),
                        ip: any_ip(7)
                    },
                    until
                )
            ]
        );
    }

    #[test]
    fn learned_addresses_are_capped_and_never_taken_from_another_device() {
        let mut core = Core::new(Policy {
            devices_per_code: 2,
            ..Policy::default()
        });
        session_until(&mut core, client(1, 1));
        core.accept_code(client(2, 2), good(0), at(0)).unwrap();
        // MAC 2 claims MAC 1's login address and many more: it gets only free ones, and
        // at most the cap.
        let pairs: Vec<(u8, u8)> = (0..20).map(|n| (2, n)).collect();
        core.learn_addresses(&seen(&pairs), at(1));
        let devices = session(&core, 0).devices;
        let other = devices.iter().find(|d| d.client.mac == mac(2)).unwrap();
        assert_eq!(other.also.len(), MAX_ADDRESSES_PER_DEVICE);
        assert!(
            other.also.iter().all(IpAddr::is_ipv6),
            "no second IPv4 address"
        );
        assert_eq!(core.status_of(ip(1), at(1)).map(|s| s.mac), Some(mac(1)));
    }

    #[test]
    fn the_device_active_least_recently_makes_room() {
        // (devices per code, MACs accepted and then active in this order, revoked)
        let cases: [(u32, &[u8], Option<u8>); 5] = [
            (3, &[1, 2], None),
            (2, &[1, 2], Some(1)),
            (2, &[2, 1], Some(2)),
            (3, &[3, 1, 2], Some(3)),
            (1, &[1], Some(1)),
        ];
        for (limit, active, gone) in cases {
            let mut core = Core::new(policy(limit));
            for &m in active {
                core.accept_code(client(m, m), good(0), at(0)).unwrap();
            }
            for (t, &m) in active.iter().enumerate() {
                core.record_usage(&[(client(m, m), down(1))], at(1 + t as u64));
            }
            let actions = core.accept_code(client(9, 9), good(0), at(10)).unwrap();
            let mut expected: Vec<Action> = gone
                .map(|m| revoke(client(m, m), EndReason::Moved))
                .into_iter()
                .collect();
            expected.push(allow(client(9, 9), at(36_000)));
            assert_eq!(actions, expected, "{limit} {active:?}");
            let devices = session(&core, 0).devices.len();
            assert_eq!(devices, (active.len() + 1).min(limit as usize));
        }
    }

    #[test]
    fn zero_devices_per_code_means_one() {
        let mut core = Core::new(policy(0));
        core.accept_code(client(1, 1), good(0), at(0)).unwrap();
        core.accept_code(client(2, 2), good(0), at(1)).unwrap();
        assert_eq!(core.allowed(), [(client(2, 2), at(36_000))]);
    }

    #[test]
    fn usage_is_attributed_per_device_and_session() {
        let mut core = Core::new(policy(2));
        core.accept_code(client(1, 1), good(0), at(0)).unwrap();
        core.accept_code(client(2, 2), good(0), at(0)).unwrap();
        let actions = core.record_usage(
            &[
                (client(1, 1), down(100)),
                (client(2, 2), down(0)),
                (client(1, 1), down(50)),
                (client(3, 3), down(7)),
                // Right MAC, wrong IP: not the bound client.
                (client(1, 9), down(5)),
            ],
            at(20),
        );
        assert!(actions.is_empty());
        assert_eq!(core.unattributed_bytes(), 12);
        let view = session(&core, 0);
        assert_eq!(view.used_bytes, 150);
        let devices: Vec<(Client, u64, Millis)> = view
            .devices
            .iter()
            .map(|d| (d.client, d.used_bytes, d.last_active))
            .collect();
        // A zero delta is no activity.
        assert_eq!(
            devices,
            [(client(1, 1), 150, at(20)), (client(2, 2), 0, at(0))]
        );
    }

    #[test]
    fn reaching_the_quota_ends_the_session() {
        // (quota, deltas of the two devices, ended with)
        let cases = [
            (1000, vec![(1, 999)], None),
            (1000, vec![(1, 1000)], Some(1000)),
            (1000, vec![(1, 600), (2, 600)], Some(1200)),
            // Bytes after the end are not the session's.
            (1000, vec![(1, 1500), (2, 10)], Some(1500)),
        ];
        for (quota, deltas, ended_with) in cases {
            let mut core = Core::new(policy(2));
            core.accept_code(client(1, 1), grant(0, quota, None), at(0))
                .unwrap();
            core.accept_code(client(2, 2), grant(0, quota, None), at(0))
                .unwrap();
            let deltas: Vec<(Client, Usage)> = deltas
                .iter()
                .map(|&(m, d)| (client(m, m), down(d)))
                .collect();
            let actions = core.record_usage(&deltas, at(5));
            match ended_with {
                None => {
                    assert!(actions.is_empty());
                    assert_eq!(core.allowed().len(), 2);
                }
                Some(used) => {
                    assert_eq!(
                        actions,
                        [
                            revoke(client(1, 1), EndReason::QuotaUsed),
                            revoke(client(2, 2), EndReason::QuotaUsed),
                            ended(0, EndReason::QuotaUsed, used),
                        ],
                        "{deltas:?}"
                    );
                    let total: u64 = deltas.iter().map(|(_, d)| d.total()).sum();
                    assert_eq!(core.unattributed_bytes(), total - used);
                    assert!(core.allowed().is_empty() && core.sessions().is_empty());
                    // The backend still says bytes are left: the core knows better.
                    assert_eq!(
                        core.accept_code(client(1, 1), good(0), at(6)),
                        Err(Refusal::UsedUp)
                    );
                }
            }
        }
    }

    #[test]
    fn expiry_ends_the_session() {
        let mut core = Core::new(Policy::default());
        core.accept_code(client(1, 1), grant(0, MB, Some(at(60))), at(0))
            .unwrap();
        core.record_usage(&[(client(1, 1), down(42))], at(30));
        assert!(core.tick(at(59)).is_empty());
        // Expired but not yet ticked: refused, and left for tick to end.
        assert_eq!(
            core.accept_code(client(1, 1), good(0), at(60)),
            Err(Refusal::Expired)
        );
        assert_eq!(
            core.tick(at(60)),
            [
                revoke(client(1, 1), EndReason::Expired),
                ended(0, EndReason::Expired, 42)
            ]
        );
        assert!(core.allowed().is_empty());
        assert!(core.tick(at(61)).is_empty());
    }

    #[test]
    fn idle_devices_are_revoked_and_their_session_stays() {
        // (idle timeout, last traffic at, tick at, revoked)
        let minute = Duration::from_secs(60);
        let cases = [
            (Some(minute), 0, 60, false),
            (Some(minute), 0, 61, true),
            (Some(minute), 30, 90, false),
            (Some(minute), 30, 91, true),
            (None, 0, 30_000, false),
        ];
        for (idle_timeout, traffic, tick, revoked) in cases {
            let mut core = Core::new(Policy {
                idle_timeout,
                ..Policy::default()
            });
            core.accept_code(client(1, 1), good(0), at(0)).unwrap();
            if traffic > 0 {
                core.record_usage(&[(client(1, 1), down(10))], at(traffic));
            }
            let actions = core.tick(at(tick));
            if revoked {
                assert_eq!(actions, [revoke(client(1, 1), EndReason::Idle)]);
                assert!(core.allowed().is_empty());
                // The session stays: entering the code again brings the device back with
                // the session's bytes.
                assert_eq!(
                    session(&core, 0).used_bytes,
                    if traffic > 0 { 10 } else { 0 }
                );
                core.accept_code(client(1, 1), good(0), at(tick)).unwrap();
                assert_eq!(core.allowed().len(), 1);
            } else {
                assert!(actions.is_empty(), "{idle_timeout:?} {traffic} {tick}");
                assert_eq!(core.allowed().len(), 1);
            }
        }
    }

    #[test]
    fn ended_codes_are_forgotten_after_their_expiry_or_seven_days() {
        let week = REMEMBER_ENDED.as_secs();
        // (code's own expiry, checked at, still refused)
        let cases = [
            (Some(at(3600)), 3599, true),
            (Some(at(3600)), 3600, false),
            (Some(at(30 * 86_400)), week - 1, true),
            (Some(at(30 * 86_400)), week + 10, false),
            (None, week - 1, true),
            (None, week + 10, false),
        ];
        for (expires, check, refused) in cases {
            let mut core = Core::new(Policy::default());
            core.accept_code(client(1, 1), grant(0, 100, expires), at(0))
                .unwrap();
            core.record_usage(&[(client(1, 1), down(100))], at(10));
            core.tick(at(check));
            let again = core.accept_code(client(1, 1), grant(0, 100, None), at(check));
            assert_eq!(again.is_err(), refused, "{expires:?} {check}: {again:?}");
        }
    }

    #[test]
    fn a_session_capped_by_max_session_stays_ended() {
        // The backend still grants a code with no expiry after the cap, maybe with bytes it
        // has not heard of: the code stays refused.
        let mut core = Core::new(Policy::default());
        core.accept_code(client(1, 1), grant(0, MB, None), at(0))
            .unwrap();
        let actions = core.tick(at(86_400));
        assert_eq!(actions.last(), Some(&ended(0, EndReason::Expired, 0)));
        core.tick(at(86_401));
        assert_eq!(
            core.accept_code(client(1, 1), grant(0, MB, None), at(86_401)),
            Err(Refusal::Expired)
        );
    }

    #[test]
    fn kick_revokes_the_device_and_keeps_the_session() {
        let mut core = Core::new(policy(2));
        core.accept_code(client(1, 1), good(0), at(0)).unwrap();
        core.accept_code(client(2, 2), good(0), at(0)).unwrap();
        core.record_usage(&[(client(1, 1), down(99))], at(1));
        assert_eq!(
            core.kick(mac(1), at(2)),
            [revoke(client(1, 1), EndReason::Kicked)]
        );
        assert!(core.kick(mac(1), at(3)).is_empty());
        assert!(core.kick(mac(7), at(3)).is_empty());
        assert_eq!(core.allowed(), [(client(2, 2), at(36_000))]);
        assert_eq!(session(&core, 0).used_bytes, 99);
        assert_eq!(
            core.accept_code(client(1, 1), good(0), at(4)),
            Ok(vec![allow(client(1, 1), at(36_000))])
        );
    }

    #[test]
    fn revoking_a_code_ends_its_session_for_good() {
        let mut core = Core::new(policy(2));
        core.accept_code(client(1, 1), good(0), at(0)).unwrap();
        core.accept_code(client(2, 2), good(0), at(0)).unwrap();
        core.accept_code(client(3, 3), good(1), at(0)).unwrap();
        core.record_usage(&[(client(1, 1), down(7)), (client(2, 2), down(8))], at(1));
        assert_eq!(
            core.revoke_code(&code(0), at(2)),
            [
                revoke(client(1, 1), EndReason::CodeRevoked),
                revoke(client(2, 2), EndReason::CodeRevoked),
                ended(0, EndReason::CodeRevoked, 15),
            ]
        );
        assert_eq!(core.allowed(), [(client(3, 3), at(36_000))]);
        assert_eq!(
            core.accept_code(client(1, 1), good(0), at(3)),
            Err(Refusal::Revoked)
        );
        // A code never entered here is refused too, and nothing is reported for it.
        assert!(core.revoke_code(&code(2), at(3)).is_empty());
        assert_eq!(
            core.accept_code(client(4, 4), good(2), at(4)),
            Err(Refusal::Revoked)
        );
        // Revoking an ended code changes how it is refused, and nothing else.
        core.record_usage(&[(client(3, 3), down(100 * MB))], at(5));
        assert_eq!(
            core.accept_code(client(3, 3), good(1), at(6)),
            Err(Refusal::UsedUp)
        );
        assert!(core.revoke_code(&code(1), at(6)).is_empty());
        assert_eq!(
            core.accept_code(client(3, 3), good(1), at(7)),
            Err(Refusal::Revoked)
        );
    }

    #[test]
    fn status_of_an_online_device() {
        let mut core = Core::new(policy(2));
        core.accept_code(client(1, 1), grant(0, 1000, Some(at(60))), at(0))
            .unwrap();
        core.accept_code(client(2, 2), grant(0, 1000, Some(at(60))), at(0))
            .unwrap();
        core.record_usage(
            &[(client(1, 1), down(100)), (client(2, 2), down(50))],
            at(1),
        );
        assert_eq!(
            core.status_of(ip(2), at(2)),
            Some(ClientStatus {
                code: code(0),
                mac: mac(2),
                bytes_left: 850,
                used_bytes: 150,
                expires_at: at(60),
                code_expires: true,
                other_account: false,
            })
        );
        assert_eq!(core.status_of(ip(3), at(2)), None);
        // Past its expiry it is not online, even before the tick that ends it.
        assert_eq!(core.status_of(ip(2), at(60)), None);
    }

    #[test]
    fn views_serialize_for_the_command_line() {
        let mut core = Core::new(Policy::default());
        core.accept_code(client(1, 1), good(0), at(0)).unwrap();
        let json = serde_json::to_value(core.sessions()).unwrap();
        assert_eq!(json[0]["code"], "AAAA2222");
        assert_eq!(json[0]["devices"][0]["client"]["mac"], "02:00:00:00:00:01");
        assert_eq!(json[0]["devices"][0]["client"]["ip"], "10.66.0.1");
        assert_eq!(json[0]["quota_bytes"], 100 * MB);
        assert_eq!(json[0]["expires_at"], at(36_000).0);
    }

    /// The first sign-in decides: a session counts for the account it started with (or for
    /// none) until it ends; another account on its code is refused, changing nothing.
    #[test]
    fn a_session_counts_for_the_account_it_started_with() {
        let mut core = Core::new(policy(3));
        let signed = |n: usize, who: Option<&str>| Grant {
            consumer: who.map(str::to_owned),
            ..good(n)
        };
        core.accept_code(client(1, 1), signed(0, Some("A")), at(0))
            .unwrap();
        assert_eq!(session(&core, 0).consumer.as_deref(), Some("A"));
        // The same account again, and a device without one, join it.
        core.accept_code(client(2, 2), signed(0, Some("A")), at(1))
            .unwrap();
        core.accept_code(client(3, 3), signed(0, None), at(2))
            .unwrap();
        assert_eq!(session(&core, 0).devices.len(), 3);
        assert_eq!(session(&core, 0).consumer.as_deref(), Some("A"));
        // Another account is refused and changes nothing, not even for a device already in.
        let before = core.snapshot();
        for who in [client(4, 4), client(2, 2)] {
            assert_eq!(
                core.accept_code(who, signed(0, Some("B")), at(3)),
                Err(Refusal::OtherAccount)
            );
            assert_eq!(core.snapshot(), before);
        }
        // A session started without an account stays without.
        core.accept_code(client(5, 5), signed(1, None), at(4))
            .unwrap();
        assert_eq!(
            core.accept_code(client(6, 6), signed(1, Some("B")), at(5)),
            Err(Refusal::OtherAccount)
        );
        assert_eq!(session(&core, 1).consumer, None);
        // Kept across a restart; a snapshot without an account has no such field.
        let json = serde_json::to_string(&core.snapshot()).unwrap();
        assert_eq!(json.matches("\"consumer\"").count(), 1, "{json}");
        let (mut core, _) = Core::restore(policy(3), serde_json::from_str(&json).unwrap(), at(6));
        assert_eq!(session(&core, 0).consumer.as_deref(), Some("A"));
        let view = serde_json::to_value(core.sessions()).unwrap();
        assert_eq!(view[0]["consumer"], "A");
        assert!(view[1].get("consumer").is_none());
        // Its end names the account, for the ledger.
        let actions = core.revoke_code(&code(0), at(7));
        assert!(
            actions.iter().any(|a| matches!(
                a,
                Action::SessionEnded { consumer: Some(who), .. } if who == "A"
            )),
            "{actions:?}"
        );
    }

    #[test]
    fn snapshot_round_trips_through_json() {
        let mut core = Core::new(policy(2));
        core.accept_code(client(1, 1), good(0), at(0)).unwrap();
        core.accept_code(client(2, 2), good(1), at(0)).unwrap();
        core.record_usage(&[(client(1, 1), down(10)), (client(9, 9), down(3))], at(1));
        core.revoke_code(&code(1), at(2));
        let json = serde_json::to_string(&core.snapshot()).unwrap();
        let snapshot: Snapshot = serde_json::from_str(&json).unwrap();
        let (restored, actions) = Core::restore(policy(2), snapshot, at(3));
        assert_eq!(actions, [allow(client(1, 1), at(36_000))]);
        assert_eq!(restored.snapshot(), core.snapshot());
        assert_eq!(restored.unattributed_bytes(), 3);
        let mut restored = restored;
        assert_eq!(
            restored.accept_code(client(2, 2), good(1), at(4)),
            Err(Refusal::Revoked)
        );
    }

    #[test]
    fn restore_ends_what_ended_while_the_daemon_was_down() {
        let mut core = Core::new(Policy {
            devices_per_code: 2,
            idle_timeout: Some(Duration::from_secs(600)),
            ..Policy::default()
        });
        core.accept_code(client(1, 1), grant(0, MB, Some(at(60))), at(0))
            .unwrap();
        core.accept_code(client(2, 2), good(1), at(0)).unwrap();
        core.accept_code(client(3, 3), good(1), at(0)).unwrap();
        core.record_usage(&[(client(1, 1), down(5)), (client(3, 3), down(6))], at(500));
        let (restored, actions) = Core::restore(*core.policy(), core.snapshot(), at(700));
        assert_eq!(
            actions,
            [
                revoke(client(1, 1), EndReason::Expired),
                ended(0, EndReason::Expired, 5),
                revoke(client(2, 2), EndReason::Idle),
                allow(client(3, 3), at(36_000)),
            ]
        );
        assert_eq!(restored.allowed(), [(client(3, 3), at(36_000))]);
    }

    #[test]
    fn restore_under_a_smaller_device_limit_keeps_the_most_recent() {
        let mut core = Core::new(policy(3));
        for m in 1..=3 {
            core.accept_code(client(m, m), good(0), at(0)).unwrap();
        }
        core.record_usage(&[(client(2, 2), down(1))], at(5));
        let (restored, actions) = Core::restore(policy(1), core.snapshot(), at(6));
        assert_eq!(
            actions,
            [
                revoke(client(1, 1), EndReason::Moved),
                revoke(client(3, 3), EndReason::Moved),
                allow(client(2, 2), at(36_000)),
            ]
        );
        assert_eq!(session(&restored, 0).used_bytes, 1);
    }

    #[test]
    fn the_ledger_raises_a_restored_session_but_never_adds_to_it() {
        let mut core = Core::new(Policy::default());
        core.accept_code(client(1, 1), grant(0, 1_000, None), at(0))
            .unwrap();
        core.record_usage(&[(client(1, 1), Usage { up: 100, down: 300 })], at(1));
        // The ledger has less down, more up: each direction takes the larger.
        let actions = core.raise_usage(&code(0), at(0), Usage { up: 150, down: 200 }, at(2));
        assert!(actions.is_empty());
        let view = session(&core, 0);
        assert_eq!((view.up_bytes, view.used_bytes), (150, 450));
        // Another session of the same code (another start) is not touched.
        assert!(
            core.raise_usage(&code(0), at(1), Usage { up: 900, down: 900 }, at(2))
                .is_empty()
        );
        assert_eq!(session(&core, 0).used_bytes, 450);
        // Raised to the quota: the session ends with the ledger's totals.
        let actions = core.raise_usage(&code(0), at(0), Usage { up: 150, down: 850 }, at(3));
        assert_eq!(
            actions,
            [
                revoke(client(1, 1), EndReason::QuotaUsed),
                Action::SessionEnded {
                    code: code(0),
                    started_at: at(0),
                    reason: EndReason::QuotaUsed,
                    used_bytes: 1_000,
                    up_bytes: 150,
                    consumer: None,
                }
            ]
        );
    }

    #[test]
    fn restore_survives_a_damaged_snapshot() {
        let json = r#"{
            "sessions": [
                {"code": "AAAA2222", "quota_bytes": 100, "used_bytes": 10,
                 "started_at": 1700000000000, "expires_at": 1700000060000, "code_expires_at": null,
                 "devices": [{"client": {"mac": "02:00:00:00:00:01", "ip": "10.66.0.1"},
                              "since": 1700000000000, "last_active": 1700000000000,
                              "used_bytes": 10}]},
                {"code": "AAAA2222", "quota_bytes": 100, "used_bytes": 95,
                 "expires_at": 1700000060000, "code_expires_at": null,
                 "devices": [{"client": {"mac": "02:00:00:00:00:01", "ip": "10.66.0.2"},
                              "since": 1700000000000, "last_active": 1700000000000,
                              "used_bytes": 95}]},
                {"code": "BBBB3333", "quota_bytes": 5, "used_bytes": 9,
                 "started_at": 1700000000000, "expires_at": 1700000060000, "code_expires_at": null, "devices": []}
            ],
            "ended": [{"code": "AAAA2222", "refusal": "revoked", "forget_at": 1800000000000}],
            "unattributed_bytes": 4
        }"#;
        let snapshot: Snapshot = serde_json::from_str(json).unwrap();
        let (core, actions) = Core::restore(Policy::default(), snapshot, at(1));
        assert_eq!(
            actions,
            [
                revoke(client(1, 2), EndReason::Moved),
                revoke(client(1, 1), EndReason::QuotaUsed),
                ended(0, EndReason::QuotaUsed, 105),
                ended(1, EndReason::QuotaUsed, 9),
            ]
        );
        assert!(core.allowed().is_empty());
        assert_eq!(core.unattributed_bytes(), 4);
    }

    // ---- Properties over random sequences of operations ----

    #[derive(Debug, Clone)]
    enum Op {
        Accept {
            code: usize,
            mac: u8,
            ip: u8,
            remaining: u64,
            /// Seconds from now; `None`: the code does not expire.
            expires_in: Option<u64>,
            /// The account signed in with it, of three; `None`: none.
            consumer: Option<u8>,
        },
        Usage {
            /// (index into `allowed()`, delta): traffic of online devices.
            online: Vec<(usize, u64)>,
            /// (MAC, IP, delta): traffic of anyone.
            stray: Vec<(u8, u8, u64)>,
        },
        /// Milliseconds that pass before the tick.
        Tick(u64),
        Kick(u8),
        Revoke(usize),
        /// A restart through the JSON snapshot, after this many milliseconds down.
        Restart(u64),
        /// The neighbour table: (MAC, IP) pairs, the addresses from a wider range than
        /// logins use, so devices learn some, lose some, and collide.
        Learn(Vec<(u8, u8)>),
        /// The source asked again about a code: what it has left (`None`: expired).
        Rechecked(usize, Option<u64>),
        /// A code that cannot be asked again: its devices leave.
        Release(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (
                0..3usize,
                0..5u8,
                // Mostly a device keeps its IP; sometimes it gets a new one, or one another
                // device had.
                prop_oneof![4 => Just(0u8), 1 => 0..5u8],
                prop_oneof![1 => Just(0u64), 3 => 1..6_000u64, 3 => 6_000..60_000u64],
                proptest::option::weighted(0.8, 0..150u64),
                proptest::option::weighted(0.6, 0..3u8),
            )
                .prop_map(|(code, mac, shift, remaining, expires_in, consumer)| Op::Accept {
                    code,
                    mac,
                    ip: (mac + shift) % 5,
                    remaining,
                    expires_in,
                    consumer,
                }),
            5 => (
                proptest::collection::vec((0..8usize, 0..3_000u64), 0..4),
                proptest::collection::vec((0..5u8, 0..5u8, 0..1_000u64), 0..2),
            )
                .prop_map(|(online, stray)| Op::Usage { online, stray }),
            // Mostly the second-by-second ticks, sometimes a long quiet spell.
            3 => prop_oneof![3 => 0..5_000u64, 1 => 0..40_000u64].prop_map(Op::Tick),
            1 => (0..5u8).prop_map(Op::Kick),
            1 => (0..3usize).prop_map(Op::Revoke),
            1 => (0..40_000u64).prop_map(Op::Restart),
            2 => proptest::collection::vec((0..5u8, 0..12u8), 0..12).prop_map(Op::Learn),
            1 => (0..3usize, proptest::option::weighted(0.7, 0..60_000u64))
                .prop_map(|(n, left)| Op::Rechecked(n, left)),
            1 => (0..3usize).prop_map(Op::Release),
        ]
    }

    fn policies() -> impl Strategy<Value = Policy> {
        (
            1..=3u32,
            proptest::option::of(Just(Duration::from_secs(30))),
        )
            .prop_map(|(devices_per_code, idle_timeout)| Policy {
                devices_per_code,
                idle_timeout,
                max_session: Duration::from_secs(90),
            })
    }

    /// Snapshots no core would write: duplicate codes, MACs and IPs bound twice, sessions
    /// at or over quota, too many devices, times anywhere.
    fn damaged_snapshots() -> impl Strategy<Value = Snapshot> {
        let time = prop_oneof![Just(0u64), 0..200_000u64, Just(u64::MAX)]
            .prop_map(|ms| Millis(T0.0.saturating_add(ms)));
        let device = (
            0..4u8,
            0..4u8,
            proptest::collection::vec(0..12u8, 0..12),
            time.clone(),
            time.clone(),
            any::<u64>(),
        )
            .prop_map(|(m, i, also, since, last_active, used_bytes)| Device {
                up_bytes: used_bytes / 3,
                client: client(m, i),
                also: also.into_iter().map(any_ip).collect(),
                since,
                last_active,
                used_bytes,
            });
        let session = (
            0..3usize,
            any::<u64>(),
            any::<u64>(),
            time.clone(),
            proptest::option::of(time.clone()),
            proptest::collection::vec(device, 0..5),
        )
            .prop_map(
                |(n, quota_bytes, used_bytes, expires_at, code_expires_at, devices)| SavedSession {
                    code: code(n),
                    session: Session {
                        up_bytes: used_bytes / 2,
                        started_at: T0,
                        quota_bytes,
                        used_bytes,
                        expires_at,
                        code_expires_at,
                        devices,
                        consumer: None,
                        other_account: false,
                    },
                },
            );
        let ended = (0..3usize, time, 0..3usize).prop_map(|(n, forget_at, r)| SavedEnded {
            code: code(n),
            ended: Ended {
                refusal: [Refusal::UsedUp, Refusal::Expired, Refusal::Revoked][r],
                forget_at,
            },
        });
        (
            proptest::collection::vec(session, 0..5),
            proptest::collection::vec(ended, 0..3),
            any::<u64>(),
        )
            .prop_map(|(sessions, ended, unattributed_bytes)| Snapshot {
                sessions,
                ended,
                unattributed_bytes,
            })
    }

    /// What the shell and the outside world see: the firewall set built only from actions,
    /// and the bytes given and reported.
    struct World {
        firewall: HashMap<Client, Millis>,
        given: u64,
        reported: u64,
        /// The account each live session (code, start) began with.
        accounts: HashMap<(AccessCode, Millis), Option<String>>,
    }

    impl World {
        fn apply(&mut self, actions: &[Action]) -> Result<(), TestCaseError> {
            for action in actions {
                match action {
                    Action::Allow { client, until } => {
                        self.firewall.insert(*client, *until);
                    }
                    Action::Revoke { client, .. } => {
                        // The core never revokes what it did not allow.
                        prop_assert!(self.firewall.remove(client).is_some(), "{action:?}");
                    }
                    Action::SessionEnded {
                        code,
                        started_at,
                        used_bytes,
                        consumer,
                        ..
                    } => {
                        self.reported += used_bytes;
                        // Its usage is reported for the account it began with.
                        if let Some(began) = self.accounts.remove(&(code.clone(), *started_at)) {
                            prop_assert_eq!(consumer, &began, "{:?}", action);
                        }
                    }
                }
            }
            Ok(())
        }

        /// A grant with `consumer` was accepted or refused for the session of `code`.
        fn accepted(
            &mut self,
            core: &Core,
            code: &AccessCode,
            consumer: Option<String>,
            refused: Option<Refusal>,
        ) -> Result<(), TestCaseError> {
            let Some(session) = core.sessions().into_iter().find(|s| &s.code == code) else {
                return Ok(());
            };
            let key = (code.clone(), session.started_at);
            let began = self
                .accounts
                .entry(key)
                .or_insert_with(|| consumer.clone())
                .clone();
            // A session's account never changes; another one is refused for that only.
            prop_assert_eq!(&session.consumer, &began);
            let other = consumer.is_some() && consumer != began;
            if other {
                prop_assert!(refused.is_some(), "another account was let in");
            }
            if refused == Some(Refusal::OtherAccount) {
                prop_assert!(other, "refused for an account that is the session's");
            }
            Ok(())
        }

        fn check(&self, core: &Core, now: Millis) -> Result<(), TestCaseError> {
            let sessions = core.sessions();
            let allowed = core.allowed();

            // 1. Bytes are never lost or counted twice.
            let live: u64 = sessions.iter().map(|s| s.used_bytes).sum();
            prop_assert_eq!(self.given, live + self.reported + core.unattributed_bytes());

            // 2. No allowed device is over quota or past its expiry.
            for (client, until) in &allowed {
                let session = sessions.iter().find(|s| {
                    s.devices.iter().any(|d| {
                        d.client.mac == client.mac
                            && (d.client.ip == client.ip || d.also.contains(&client.ip))
                    })
                });
                prop_assert!(session.is_some(), "{client} in no session");
                if let Some(session) = session {
                    prop_assert!(session.used_bytes < session.quota_bytes);
                    prop_assert!(*until > now && *until == session.expires_at);
                }
                let status = core.status_of(client.ip, now);
                prop_assert_eq!(status.map(|s| s.mac), Some(client.mac));
            }
            // A session's devices account for no more than its bytes.
            for session in &sessions {
                let devices: u64 = session.devices.iter().map(|d| d.used_bytes).sum();
                prop_assert!(devices <= session.used_bytes);
            }

            // The kernel quotas wanted: every allowed device counts against exactly its
            // session's, which is not used up.
            let wanted = core.wanted_quotas();
            let mut counted: Vec<Client> = wanted.iter().flat_map(|q| q.clients.clone()).collect();
            counted.sort();
            let mut online: Vec<Client> = allowed.iter().map(|(c, _)| *c).collect();
            online.sort();
            prop_assert_eq!(counted, online);
            for quota in &wanted {
                prop_assert!(!quota.clients.is_empty() && quota.used_bytes < quota.limit_bytes);
                let session = sessions.iter().find(|s| s.code == quota.code);
                prop_assert_eq!(session.map(|s| s.used_bytes), Some(quota.used_bytes));
            }

            // 3. The firewall, fed only the actions, is in step with the core.
            let expected: HashMap<Client, Millis> = allowed.iter().copied().collect();
            prop_assert_eq!(&self.firewall, &expected);

            // 4. Devices per code is never exceeded; a MAC is one device at most, an IP is
            // bound once at most, and a device has at most its cap of other addresses.
            let limit = core.policy().devices_per_code as usize;
            let mut devices = 0;
            for session in &sessions {
                prop_assert!(session.devices.len() <= limit);
                devices += session.devices.len();
                for device in &session.devices {
                    prop_assert!(device.also.len() <= MAX_ADDRESSES_PER_DEVICE);
                }
            }
            let macs: HashSet<Mac> = allowed.iter().map(|(c, _)| c.mac).collect();
            let ips: HashSet<IpAddr> = allowed.iter().map(|(c, _)| c.ip).collect();
            prop_assert_eq!(macs.len(), devices);
            prop_assert_eq!(ips.len(), allowed.len());
            Ok(())
        }
    }

    /// The devices of each kernel quota the core wants.
    fn quota_devices(core: &Core) -> Vec<(AccessCode, Vec<Client>)> {
        core.wanted_quotas()
            .into_iter()
            .map(|quota| (quota.code, quota.clients))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn the_core_keeps_its_promises(
            policy in policies(),
            ops in proptest::collection::vec(op(), 1..60),
        ) {
            let mut core = Core::new(policy);
            let mut now = T0;
            let mut world = World {
                firewall: HashMap::new(),
                given: 0,
                reported: 0,
                accounts: HashMap::new(),
            };
            for op in ops {
                let before = (core.revision(), core.allowed(), quota_devices(&core));
                let actions = match op {
                    Op::Accept { code: n, mac: m, ip: i, remaining, expires_in, consumer } => {
                        let expires = expires_in.map(|s| now.plus(Duration::from_secs(s)));
                        let consumer = consumer.map(|c| format!("consumer-{c}"));
                        let grant = Grant {
                            consumer: consumer.clone(),
                            ..grant(n, remaining, expires)
                        };
                        let before = core.snapshot();
                        let result = core.accept_code(client(m, i), grant, now);
                        world.accepted(&core, &code(n), consumer, result.as_ref().err().copied())?;
                        match result {
                            Ok(actions) => actions,
                            Err(_) => {
                                // A refusal changes nothing.
                                prop_assert_eq!(core.snapshot(), before);
                                Vec::new()
                            }
                        }
                    }
                    Op::Usage { online, stray } => {
                        let allowed = core.allowed();
                        let mut deltas: Vec<(Client, Usage)> = online
                            .into_iter()
                            .filter_map(|(i, d)| {
                                allowed.get(i % allowed.len().max(1)).map(|(c, _)| (*c, split(d)))
                            })
                            .collect();
                        deltas.extend(stray.into_iter().map(|(m, i, d)| (client(m, i), split(d))));
                        world.given += deltas.iter().map(|(_, d)| d.total()).sum::<u64>();
                        core.record_usage(&deltas, now)
                    }
                    Op::Tick(ms) => {
                        now = now.plus(Duration::from_millis(ms));
                        core.tick(now)
                    }
                    Op::Kick(m) => core.kick(mac(m), now),
                    Op::Revoke(n) => core.revoke_code(&code(n), now),
                    Op::Restart(ms) => {
                        now = now.plus(Duration::from_millis(ms));
                        let json = serde_json::to_string(&core.snapshot()).unwrap();
                        let snapshot: Snapshot = serde_json::from_str(&json).unwrap();
                        let (restored, actions) = Core::restore(policy, snapshot, now);
                        core = restored;
                        actions
                    }
                    Op::Learn(pairs) => core.learn_addresses(&seen(&pairs), now),
                    Op::Rechecked(n, Some(left)) => {
                        let quota = |core: &Core| {
                            core.sessions().into_iter().find(|s| s.code == code(n)).map(|s| s.quota_bytes)
                        };
                        let before = quota(&core);
                        let actions = core.code_left(&code(n), left, now);
                        // Never raised.
                        prop_assert!(quota(&core).unwrap_or(0) <= before.unwrap_or(0));
                        actions
                    }
                    Op::Rechecked(n, None) => core.code_expired(&code(n), now),
                    Op::Release(n) => core.release_devices(&code(n)),
                };
                world.apply(&actions)?;
                world.check(&core, now)?;
                // An unchanged revision, an unchanged kernel wanted (what the enforcer's
                // shortcut relies on).
                if core.revision() == before.0 {
                    prop_assert_eq!(&core.allowed(), &before.1);
                    prop_assert_eq!(&quota_devices(&core), &before.2);
                }
                prop_assert_eq!(
                    core.next_expiry(),
                    core.allowed().iter().map(|(_, until)| *until).min()
                );
            }
        }

        #[test]
        fn restoring_at_once_changes_nothing(
            policy in policies(),
            ops in proptest::collection::vec(op(), 1..40),
        ) {
            let mut core = Core::new(policy);
            let mut now = T0;
            for op in ops {
                match op {
                    Op::Accept { code: n, mac: m, ip: i, remaining, expires_in, consumer } => {
                        let expires = expires_in.map(|s| now.plus(Duration::from_secs(s)));
                        let grant = Grant {
                            consumer: consumer.map(|c| format!("consumer-{c}")),
                            ..grant(n, remaining, expires)
                        };
                        let _ = core.accept_code(client(m, i), grant, now);
                    }
                    Op::Usage { online, .. } => {
                        let allowed = core.allowed();
                        let deltas: Vec<(Client, Usage)> = online
                            .into_iter()
                            .filter_map(|(i, d)| {
                                allowed.get(i % allowed.len().max(1)).map(|(c, _)| (*c, split(d)))
                            })
                            .collect();
                        core.record_usage(&deltas, now);
                    }
                    Op::Tick(ms) | Op::Restart(ms) => {
                        now = now.plus(Duration::from_millis(ms));
                        core.tick(now);
                    }
                    Op::Kick(m) => {
                        core.kick(mac(m), now);
                    }
                    Op::Revoke(n) => {
                        core.revoke_code(&code(n), now);
                    }
                    Op::Learn(pairs) => {
                        core.learn_addresses(&seen(&pairs), now);
                    }
                    Op::Rechecked(n, Some(left)) => {
                        core.code_left(&code(n), left, now);
                    }
                    Op::Rechecked(n, None) => {
                        core.code_expired(&code(n), now);
                    }
                    Op::Release(n) => {
                        core.release_devices(&code(n));
                    }
                }
            }
            // Right after a tick nothing is due, so a restart only re-allows.
            core.tick(now);
            let (restored, actions) = Core::restore(policy, core.snapshot(), now);
            prop_assert_eq!(restored.snapshot(), core.snapshot());
            let allows: Vec<Action> = core
                .allowed()
                .into_iter()
                .map(|(client, until)| Action::Allow { client, until })
                .collect();
            prop_assert_eq!(actions, allows);
        }

        #[test]
        fn a_damaged_snapshot_never_panics(snapshot in damaged_snapshots(), policy in policies()) {
            let (core, _) = Core::restore(policy, snapshot, at(60));
            let allowed = core.allowed();
            let macs: HashSet<Mac> = allowed.iter().map(|(c, _)| c.mac).collect();
            let ips: HashSet<IpAddr> = allowed.iter().map(|(c, _)| c.ip).collect();
            let sessions = core.sessions();
            let devices: usize = sessions.iter().map(|s| s.devices.len()).sum();
            prop_assert_eq!(macs.len(), devices);
            prop_assert_eq!(ips.len(), allowed.len());
            for session in sessions {
                prop_assert!(session.used_bytes < session.quota_bytes);
                prop_assert!(session.expires_at > at(60));
                prop_assert!(session.devices.len() <= policy.devices_per_code as usize);
                for device in &session.devices {
                    prop_assert!(device.also.len() <= MAX_ADDRESSES_PER_DEVICE);
                }
            }
        }
    }
}
