//! What the dashboard shows, as data: filled by the daemon (see [`super::Source`]), turned
//! into HTML by `pages.rs` and into JSON for the page's live refresh.

use std::net::IpAddr;

use edgeshare_shared::code::AccessCode;
use serde::Serialize;

use crate::code_book::CodeRow;
use crate::net::Mac;

/// The gateway's state now, from the state's owner.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Live {
    /// Unix milliseconds when the counters were last read.
    pub at_ms: u64,
    pub sessions: Vec<SessionLive>,
    pub health: Health,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionLive {
    pub code: AccessCode,
    pub started_ms: u64,
    pub expires_ms: u64,
    pub quota_bytes: u64,
    pub used_bytes: u64,
    /// The consumer's network account it counts for (its id), if one signed in.
    pub consumer: Option<String>,
    pub devices: Vec<DeviceLive>,
}

impl SessionLive {
    pub fn left_bytes(&self) -> u64 {
        self.quota_bytes.saturating_sub(self.used_bytes)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceLive {
    pub mac: Mac,
    pub ip: IpAddr,
    /// Its other addresses (IPv6), learned from the neighbour table.
    pub also: Vec<IpAddr>,
    pub up_bytes: u64,
    pub down_bytes: u64,
    /// Bytes per second over the last counter interval.
    pub up_rate: f64,
    pub down_rate: f64,
}

/// The gateway's health: both meters and what lies between them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Health {
    pub uptime_seconds: u64,
    /// `local` or `backend`.
    pub codes: String,
    /// Bytes the kernel counted for devices in no session.
    pub unattributed_bytes: u64,
    /// Since when (Unix ms) the backend has been unreachable, if it is (backend codes).
    pub backend_down_since_ms: Option<u64>,
    /// `None` when the capture meter is off.
    pub meters: Option<Meters>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Meters {
    /// Forwarded bytes since the daemon started, by the kernel's counters (the billing
    /// meter) and by the capture (the audit), each up and down.
    pub kernel_up: u64,
    pub kernel_down: u64,
    pub capture_up: u64,
    pub capture_down: u64,
    /// `(capture - kernel) / kernel` when all devices were last quiet.
    pub drift: Option<f64>,
    /// Of the kernel's surplus, what the LAN queue's drops explain.
    pub explained_bytes: u64,
    pub capture_drops: u64,
    pub lan_queue_drops: u64,
}

/// The agent's health, from its metrics endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Agent {
    /// Its endpoint did not answer: the reason.
    Unreachable(String),
    Running(AgentFigures),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AgentFigures {
    pub uptime_seconds: u64,
    /// Whether usage reporting is set up (`[backend]` in the agent).
    pub billing: bool,
    /// Unix seconds since when reports fail; `None`: reporting.
    pub failing_since: Option<u64>,
    pub reported_bytes: u64,
    pub pending_bytes: u64,
    pub last_error: Option<String>,
    /// What the account's credit falls short of its usage log, once the agent has compared
    /// them.
    pub shortfall: Option<Shortfall>,
}

/// Credit the account lost to reports crediting it at once (any of its gateways), as the
/// agent measured it against the backend's usage log since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Shortfall {
    pub points: u64,
    pub bytes: u64,
    /// Log entries may have gone unseen: it may be larger.
    pub entries_missed: bool,
}

/// What the provider's account has earned (backend codes only).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Earnings {
    pub name: String,
    pub points: f64,
    /// As the backend sent it: a number, or text if the backend's total is corrupted.
    pub bytes_shared: String,
}

/// Usage per period, oldest first: `(label, bytes)`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Usage {
    pub hours: Vec<(String, u64)>,
    pub days: Vec<(String, u64)>,
}

/// Everything on the dashboard's page.
#[derive(Debug, Clone, PartialEq)]
pub struct Overview {
    pub live: Option<Live>,
    pub codes: Result<Vec<CodeRow>, String>,
    pub usage: Result<Usage, String>,
    /// `None` with local codes (no account).
    pub earnings: Option<Result<Earnings, String>>,
    pub agent: Agent,
}
