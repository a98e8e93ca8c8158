//! [`MemoryFirewall`]: the firewall as a model in memory, for unit tests of the daemon shell.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::listing::{Element, join};
use super::rules::{MAX_QUOTA_BYTES, QuotaKey, quota_keys};
use super::{
    Change, ClientCounters, Firewall, FirewallError, Operation, SessionQuota, batch_operation,
    kernel_timeout, session_quota_name,
};
use crate::net::Client;

/// One call made on a [`MemoryFirewall`], with its arguments as given; a batch is recorded
/// as one [`Call::Change`] per change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Install,
    IsInstalled,
    Change(Change),
    Clients,
    Uninstall,
    ListQuotas,
}

/// An in-memory firewall that behaves like the kernel's table as [`super::NetlinkFirewall`]
/// drives it: sets survive `install`, allowing replaces a client's elements and restarts
/// their counters, the download side is keyed by IP, timeouts are ceiled to whole seconds,
/// calls before `install` fail (no such table). It never reads a clock: [`advance`] moves
/// its time.
///
/// Clones share one state, so a test keeps a clone to look in while the shell owns another.
///
/// [`advance`]: MemoryFirewall::advance
#[derive(Debug, Clone, Default)]
pub struct MemoryFirewall {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    installed: bool,
    up: BTreeMap<Client, Meter>,
    down: HashMap<IpAddr, Meter>,
    calls: Vec<Call>,
    failures_left: usize,
    /// Session quotas by session id, and the session each quota-map key counts against.
    quotas: BTreeMap<String, SessionQuota>,
    quota_keys: BTreeMap<QuotaKey, String>,
}

#[derive(Debug, Clone, Copy)]
struct Meter {
    expires_in: Duration,
    bytes: u64,
    packets: u64,
}

impl Meter {
    fn new(expires_in: Duration) -> Self {
        Meter {
            expires_in,
            bytes: 0,
            packets: 0,
        }
    }

    /// As nft would list it: time left in whole seconds, rounded down.
    fn element<K>(&self, key: K) -> Element<K> {
        Element {
            key,
            expires: Some(Duration::from_secs(self.expires_in.as_secs())),
            bytes: self.bytes,
            packets: self.packets,
        }
    }
}

impl MemoryFirewall {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already; the state is
        // still worth reading.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every call so far, in order (failed ones included).
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// Forgets the calls recorded so far.
    pub fn clear_calls(&self) {
        self.state().calls.clear();
    }

    /// The clients let through now, sorted.
    pub fn allowed(&self) -> Vec<Client> {
        self.state().up.keys().copied().collect()
    }

    /// Time left for `client`, if allowed.
    pub fn expires_in(&self, client: &Client) -> Option<Duration> {
        self.state().up.get(client).map(|meter| meter.expires_in)
    }

    pub fn installed(&self) -> bool {
        self.state().installed
    }

    /// Sets the byte counters of an allowed client (upload: its MAC . IP element; download:
    /// its IP's element). False, and nothing changes, if the client is not allowed.
    pub fn set_counters(&self, client: &Client, up_bytes: u64, down_bytes: u64) -> bool {
        let mut state = self.state();
        let State { up, down, .. } = &mut *state;
        match (up.get_mut(client), down.get_mut(&client.ip)) {
            (Some(up), Some(down)) => {
                up.bytes = up_bytes;
                down.bytes = down_bytes;
                true
            }
            _ => false,
        }
    }

    /// Traffic of an allowed client as the kernel counts it: `up_bytes` and `down_bytes`
    /// more on its counters and on the quota its upload counts against, if any. False, and
    /// nothing changes, if the client is not allowed.
    pub fn forward(&self, client: &Client, up_bytes: u64, down_bytes: u64) -> bool {
        let mut state = self.state();
        let State {
            up,
            down,
            quota_keys,
            quotas,
            ..
        } = &mut *state;
        let (Some(up), Some(down)) = (up.get_mut(client), down.get_mut(&client.ip)) else {
            return false;
        };
        up.bytes += up_bytes;
        down.bytes += down_bytes;
        if let Some(quota) = quota_keys
            .get(&QuotaKey::Up(*client))
            .and_then(|session| quotas.get_mut(session))
        {
            quota.used_bytes = (quota.used_bytes + up_bytes + down_bytes).min(quota.limit_bytes);
        }
        true
    }

    /// Sets the packet counters of an allowed client, like [`Self::set_counters`].
    pub fn set_packets(&self, client: &Client, up_packets: u64, down_packets: u64) -> bool {
        let mut state = self.state();
        let State { up, down, .. } = &mut *state;
        match (up.get_mut(client), down.get_mut(&client.ip)) {
            (Some(up), Some(down)) => {
                up.packets = up_packets;
                down.packets = down_packets;
                true
            }
            _ => false,
        }
    }

    /// The next `calls` trait calls fail with [`FirewallError::Injected`] (and change
    /// nothing); they are still recorded.
    pub fn fail_next(&self, calls: usize) {
        self.state().failures_left = calls;
    }

    /// Lets `elapsed` pass: timeouts run down, and clients whose time is up are gone, as the
    /// kernel would do on its own.
    pub fn advance(&self, elapsed: Duration) {
        let mut state = self.state();
        state.up.retain(|_, meter| {
            meter.expires_in = meter.expires_in.saturating_sub(elapsed);
            !meter.expires_in.is_zero()
        });
        state.down.retain(|_, meter| {
            meter.expires_in = meter.expires_in.saturating_sub(elapsed);
            !meter.expires_in.is_zero()
        });
    }

    /// What `nft flush ruleset` does: the table, every client and every quota are gone.
    pub fn flush_ruleset(&self) {
        self.state().clear();
    }

    /// The session whose quota `client`'s upload counts against, if any.
    pub fn quota_session(&self, client: &Client) -> Option<String> {
        self.state().quota_keys.get(&QuotaKey::Up(*client)).cloned()
    }

    /// Every session quota, by session id.
    pub fn quotas(&self) -> BTreeMap<String, SessionQuota> {
        self.state().quotas.clone()
    }

    /// Traffic of `session`'s clients: adds `bytes` to what its quota has used (as nft lists
    /// it, at most the limit). False, and nothing changes, if the session has no quota.
    pub fn use_quota(&self, session: &str, bytes: u64) -> bool {
        match self.state().quotas.get_mut(session) {
            Some(quota) => {
                quota.used_bytes = quota
                    .used_bytes
                    .saturating_add(bytes)
                    .min(quota.limit_bytes);
                true
            }
            None => false,
        }
    }

    /// True if `session` has a quota and it is used up (the kernel would drop its clients'
    /// traffic).
    pub fn quota_exhausted(&self, session: &str) -> bool {
        self.state()
            .quotas
            .get(session)
            .is_some_and(|q| q.used_bytes >= q.limit_bytes)
    }

    /// Records `call`; fails it if a failure is due or, for calls that need the table, if the
    /// table is not installed (nft: "No such file or directory").
    fn begin(
        &self,
        call: Call,
        operation: Operation,
        needs_table: bool,
    ) -> Result<MutexGuard<'_, State>, FirewallError> {
        let mut state = self.state();
        state.calls.push(call);
        if state.failures_left > 0 {
            state.failures_left -= 1;
            return Err(FirewallError::Injected { operation });
        }
        if needs_table && !state.installed {
            return Err(FirewallError::Refused {
                operation,
                status: ExitStatus::from_raw(1 << 8),
                stderr: "Error: No such file or directory (MemoryFirewall: table not installed)"
                    .to_owned(),
            });
        }
        Ok(state)
    }
}

impl State {
    /// One change of a batch already checked.
    fn change(&mut self, change: &Change) {
        match change {
            Change::Allow { client, timeout } => {
                let meter = Meter::new(kernel_timeout(*timeout));
                self.up.insert(*client, meter);
                self.down.insert(client.ip, meter);
            }
            Change::Revoke(client) => {
                self.up.remove(client);
                self.down.remove(&client.ip);
            }
            Change::SetQuota {
                session,
                clients,
                limit_bytes,
                used_bytes,
            } => {
                self.quota_keys.retain(|_, owner| owner != session);
                for key in quota_keys(clients) {
                    self.quota_keys.insert(key, session.clone());
                }
                let limit = (*limit_bytes).min(MAX_QUOTA_BYTES);
                self.quotas.insert(
                    session.clone(),
                    SessionQuota {
                        limit_bytes: limit,
                        used_bytes: (*used_bytes).min(limit),
                    },
                );
            }
            Change::ClearQuota(session) => {
                self.quota_keys.retain(|_, owner| owner != session);
                self.quotas.remove(session);
            }
        }
    }

    fn clear(&mut self) {
        self.installed = false;
        self.up.clear();
        self.down.clear();
        self.quotas.clear();
        self.quota_keys.clear();
    }
}

impl Firewall for MemoryFirewall {
    fn install(&mut self) -> Result<(), FirewallError> {
        self.begin(Call::Install, Operation::Install, false)?
            .installed = true;
        Ok(())
    }

    fn is_installed(&mut self) -> Result<bool, FirewallError> {
        Ok(self
            .begin(Call::IsInstalled, Operation::CheckInstalled, false)?
            .installed)
    }

    /// One call recorded per change; an injected failure or a missing table fails the
    /// whole batch before any change, as the kernel applies none of a refused batch.
    fn apply(&mut self, changes: &[Change]) -> Result<(), FirewallError> {
        let Some((last, first)) = changes.split_last() else {
            return Ok(());
        };
        {
            let mut state = self.state();
            state.calls.extend(first.iter().cloned().map(Call::Change));
        }
        let mut state = self.begin(Call::Change(last.clone()), batch_operation(changes), true)?;
        for change in changes {
            if let Change::SetQuota { session, .. } | Change::ClearQuota(session) = change {
                session_quota_name(session)?;
            }
        }
        for change in changes {
            state.change(change);
        }
        Ok(())
    }

    fn clients(&mut self) -> Result<Vec<ClientCounters>, FirewallError> {
        let state = self.begin(Call::Clients, Operation::ListSet("clients4_up"), true)?;
        // Through the same join as the kernel's listings, so both report alike.
        let up = state
            .up
            .iter()
            .map(|(client, meter)| meter.element(*client))
            .collect();
        let down = state
            .down
            .iter()
            .map(|(ip, meter)| meter.element(*ip))
            .collect();
        Ok(join(up, down))
    }

    fn uninstall(&mut self) -> Result<(), FirewallError> {
        self.begin(Call::Uninstall, Operation::Uninstall, false)?
            .clear();
        Ok(())
    }

    fn list_quotas(&mut self) -> Result<BTreeMap<String, SessionQuota>, FirewallError> {
        let state = self.begin(Call::ListQuotas, Operation::ListQuotas, true)?;
        Ok(state
            .quotas
            .iter()
            .map(|(session, quota)| (session.clone(), *quota))
            .collect())
    }
}
