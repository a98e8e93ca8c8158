//! The gateway's state and the accounting glue around the pure core: kernel counters in,
//! the core's decisions out to the ledger and the local code store, and to the enforcer
//! (`enforce.rs`), which plans the kernel's changes with [`crate::reconcile`] and applies
//! them. Only the owner (`owner.rs`) holds a [`State`]; the enforcer and persistence
//! (`persist.rs`) add their methods to it.

use std::collections::HashMap;
use std::path::PathBuf;

use edgeshare_shared::code::AccessCode;
use edgeshare_shared::control::{ClientUsage, LiveUsage};
use edgeshare_shared::ledger::UsageUpdate;

use super::lan::Lan;
use super::meter::Meters;
use super::persist::{Books, Persisted};
use super::session_id;
use crate::codes::CodeStore;
use crate::core::{Action, Core, Grant, Policy, Usage};
use crate::counters::{self, Baselines};
use crate::cutoff::Cutoff;
use crate::dashboard::view::{DeviceLive, Health, Live, SessionLive};
use crate::firewall::{ClientCounters, Firewall};
use crate::neighbours::Entry;
use crate::neighbours::guard::Online;
use crate::net::{Client, Millis};
use crate::reconcile::Kernel;
use crate::refusal::Refusal;
use crate::report::GatewayFigures;

/// The core and the firewall, always changed together.
pub(super) struct State {
    pub(super) core: Core,
    pub(super) firewall: Box<dyn Firewall>,
    /// Resets the TCP connections of clients cut off (`None` without CAP_NET_RAW, and in
    /// unit tests: they then end at their next segment).
    pub(super) cutoff: Option<Cutoff>,
    /// What the kernel holds (clients, their counters when last read, session quotas), as
    /// the enforcer plans its changes from.
    pub(super) kernel: Kernel,
    /// `sessions.json` and the usage ledger.
    pub(super) books: Books,
    /// The capture meter and its audit, the flows for the agent, the live rates.
    pub(super) meters: Meters,
    /// The LAN's neighbour table, where devices' other addresses are learned, and its guard.
    pub(super) lan: Lan,
}

impl State {
    /// The state as it was saved (a fresh one without a save), and the actions the restored
    /// core asks for; [`State::resume`] carries them out. The core is restored as of the
    /// save, so that `resume` can record what the kernel counted meanwhile first.
    pub(super) fn restored(
        policy: Policy,
        saved: Option<Persisted>,
        firewall: Box<dyn Firewall>,
        file: PathBuf,
        now: Millis,
    ) -> (State, Vec<Action>) {
        let (core, actions, kernel) = match saved {
            Some(saved) => {
                let (core, actions) = Core::restore(policy, saved.core, saved.saved_at.min(now));
                let kernel = Kernel::restored(Baselines::from_saved(saved.baselines));
                (core, actions, kernel)
            }
            None => (Core::new(policy), Vec::new(), Kernel::default()),
        };
        let state = State {
            core,
            firewall,
            cutoff: None,
            kernel,
            books: Books::new(file, now),
            meters: Meters::new(),
            lan: Lan::default(),
        };
        (state, actions)
    }

    /// Carries out the core's decisions: the kernel is put in step with the sessions (see
    /// [`State::enforce`]), ended sessions go to the ledger and the local code store.
    pub(super) fn apply(&mut self, actions: Vec<Action>, now: Millis, store: Option<&CodeStore>) {
        // Most ticks decide nothing; the enforcer's plan walks every session.
        if actions.is_empty() {
            return;
        }
        let mut ended = Vec::new();
        for action in actions {
            match action {
                Action::Allow { .. } => self.books.sessions_changed(),
                Action::Revoke { client, reason } => {
                    tracing::info!(%client, ?reason, "client cut off");
                    self.meters.forget(&client);
                    self.books.sessions_changed();
                }
                Action::SessionEnded {
                    code,
                    started_at,
                    reason,
                    used_bytes,
                    up_bytes,
                    consumer,
                } => {
                    let session = session_id(&code, started_at);
                    tracing::info!(%session, ?reason, used_bytes, up_bytes, "session ended");
                    self.books.ended(UsageUpdate {
                        session,
                        code: code.as_str().to_owned(),
                        up: up_bytes,
                        down: Usage::of_total(used_bytes, up_bytes).down,
                        ended: Some(reason.as_str().to_owned()),
                        consumer,
                    });
                    ended.push((code, used_bytes));
                }
            }
        }
        self.enforce(now, store);
        self.books.write_finals();
        if let Some(store) = store {
            if let Err(err) = store.record_usage(&ended) {
                tracing::error!(error = %err, "cannot record final usage in the code store");
            }
        }
    }

    /// Reads the kernel counters and hands the core the bytes since the last read. Called
    /// before the core decides anything that may cut a client off (a tick, a kick, a revoke,
    /// a login that moves a session), so that the client's last bytes go to the session it
    /// was in; the enforcer itself will not take out an element whose counter was not read
    /// (see [`crate::reconcile`]).
    pub(super) fn settle(&mut self, now: Millis, store: Option<&CodeStore>) {
        if let Some(counters) = self.read_counters() {
            self.book(&counters, now, store);
        }
    }

    /// Every element's counters (`None`, logged, if the kernel cannot be asked).
    fn read_counters(&mut self) -> Option<Vec<ClientCounters>> {
        let started = std::time::Instant::now();
        let counters = self
            .firewall
            .clients()
            .inspect_err(|err| tracing::error!(error = %err, "cannot read the kernel counters"))
            .ok()?;
        // The cost of a tick grows with the clients online; the benchmark reads this line.
        tracing::debug!(
            elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            entries = counters.len(),
            "kernel counters read"
        );
        Some(counters)
    }

    /// Hands the core the bytes of a counter reading at `now` since the last one.
    fn book(&mut self, counters: &[ClientCounters], now: Millis, store: Option<&CodeStore>) {
        let reading = counters::reading(counters);
        let deltas = self.kernel.read(&reading, now);
        if !deltas.is_empty() {
            self.books.usage_changed();
        }
        let listed: Vec<Client> = reading.iter().map(|(client, _)| *client).collect();
        self.meters.kernel_read(&deltas, &listed, now);
        let actions = self.core.record_usage(&deltas, now);
        self.apply(actions, now, store);
    }

    /// One tick, observe → plan → apply: the kernel is read first (every element's
    /// counters, the LAN's neighbour table; the LAN queue's drops with the counters, by the
    /// audit), then the core books the bytes and decides (usage first, then expiry and idle
    /// checks: bytes used just before expiry still count; then the addresses the table
    /// shows), and the enforcer plans and applies the kernel's changes.
    pub(super) fn tick(&mut self, now: Millis, store: Option<&CodeStore>) {
        let counters = self.read_counters();
        let neighbours = self.lan.entries();
        if let Some(counters) = counters {
            self.book(&counters, now, store);
        }
        self.end_used_up(now, store);
        let actions = self.core.tick(now);
        self.apply(actions, now, store);
        if let Some(entries) = neighbours {
            self.learn_addresses(&entries, now, store);
        }
        self.enforce(now, store);
    }

    /// Online devices' other addresses from the LAN's neighbour table (booked after the
    /// counters: an address a device stopped using is cut with its last bytes counted), as
    /// the guard lets the core see it: an online address another device claims stays its
    /// holder's, and the kernel's entry is pointed back at the holder and probed.
    fn learn_addresses(&mut self, entries: &[Entry], now: Millis, store: Option<&CodeStore>) {
        let online = Online::new(self.core.online_clients());
        let seen = self.lan.observed(entries, &online, now);
        let actions = self.core.learn_addresses(&seen, now);
        self.apply(actions, now, store);
    }

    /// Neighbour entries the kernel says changed (see [`Lan::notified`]).
    pub(super) fn neighbours_changed(&mut self, entries: &[Entry], now: Millis) {
        let devices: Vec<(usize, Client)> = self.core.online_clients().collect();
        let online = Online::for_entries(&devices, entries);
        self.lan.notified(entries, &online, now);
    }

    /// Tells the capture meter and the audit which clients are let through now.
    pub(super) fn meters_follow_clients(&mut self) {
        let online: Vec<Client> = self.core.allowed().into_iter().map(|(c, _)| c).collect();
        self.meters.follow(online, std::time::SystemTime::now());
    }

    /// What this gateway has used of each code, in all: every session of it the ledger
    /// holds (its latest record), the final records not yet written, and the live sessions
    /// (whose bytes since the last ledger write are only in the core). A session counts
    /// once, at the largest of its figures (they are cumulative).
    pub(super) fn used_by_code(&self) -> HashMap<AccessCode, u64> {
        let mut sessions: HashMap<String, (AccessCode, u64)> = HashMap::new();
        let mut add = |session: String, code: &str, bytes: u64| {
            let Ok(code) = AccessCode::parse(code) else {
                return;
            };
            let entry = sessions.entry(session).or_insert((code, 0));
            entry.1 = entry.1.max(bytes);
        };
        for (session, code, bytes) in self.books.recorded() {
            add(session.to_owned(), code, bytes);
        }
        for session in self.core.sessions() {
            add(
                session_id(&session.code, session.started_at),
                session.code.as_str(),
                session.used_bytes,
            );
        }
        let mut by_code: HashMap<AccessCode, u64> = HashMap::new();
        for (code, bytes) in sessions.into_values() {
            let total = by_code.entry(code).or_insert(0);
            *total = total.saturating_add(bytes);
        }
        by_code
    }

    /// Every online device's usage in its session, with its rates over the last reading.
    pub(super) fn live_usage(&self) -> LiveUsage {
        let mut clients = Vec::new();
        for session in self.core.sessions() {
            let id = session_id(&session.code, session.started_at);
            for device in session.devices {
                let (up_rate, down_rate) = self.meters.rate(&device.client);
                clients.push(ClientUsage {
                    mac: device.client.mac.to_string(),
                    ip: device.client.ip,
                    session: id.clone(),
                    up_bytes: device.up_bytes,
                    down_bytes: Usage::of_total(device.used_bytes, device.up_bytes).down,
                    up_rate,
                    down_rate,
                });
            }
        }
        LiveUsage {
            at_ms: self.meters.read_at().0,
            clients,
        }
    }

    /// What the dashboard shows of the state: the sessions with their devices' rates, and
    /// both meters. `uptime_seconds` and `codes` are the owner's to fill in.
    pub(super) fn dashboard(&self) -> Live {
        let sessions = self
            .core
            .sessions()
            .into_iter()
            .map(|session| SessionLive {
                started_ms: session.started_at.0,
                expires_ms: session.expires_at.0,
                quota_bytes: session.quota_bytes,
                used_bytes: session.used_bytes,
                consumer: session.consumer,
                devices: session
                    .devices
                    .into_iter()
                    .map(|device| {
                        let (up_rate, down_rate) = self.meters.rate(&device.client);
                        DeviceLive {
                            mac: device.client.mac,
                            ip: device.client.ip,
                            also: device.also,
                            up_bytes: device.up_bytes,
                            down_bytes: Usage::of_total(device.used_bytes, device.up_bytes).down,
                            up_rate,
                            down_rate,
                        }
                    })
                    .collect(),
                code: session.code,
            })
            .collect();
        Live {
            at_ms: self.meters.read_at().0,
            sessions,
            health: Health {
                unattributed_bytes: self.core.unattributed_bytes(),
                meters: self.meters.dashboard(),
                ..Health::default()
            },
        }
    }

    /// The Prometheus text of the metrics endpoint.
    pub(super) fn metrics(&self, capture_interface: &str) -> String {
        let sessions = self.core.sessions();
        let billed: Vec<(Client, Usage)> = sessions
            .iter()
            .flat_map(|s| &s.devices)
            .map(|d| (d.client, Usage::of_total(d.used_bytes, d.up_bytes)))
            .collect();
        let figures = GatewayFigures {
            sessions: sessions.len(),
            online: billed.len(),
            unattributed_bytes: self.core.unattributed_bytes(),
            billed: &billed,
            capture_interface: None,
            capture_buffer_bytes: 0,
            flows_dropped: 0,
        };
        self.meters.metrics(figures, capture_interface)
    }

    /// Picks up after a restart: the bytes the kernel counted while the daemon was down go
    /// to their sessions first, then the restored core's decisions are carried out (clients
    /// still in the kernel keep their elements), then expiry and idle checks run at `now`.
    pub(super) fn resume(&mut self, restored: Vec<Action>, now: Millis, store: Option<&CodeStore>) {
        self.settle(now, store);
        self.apply(restored, now, store);
        let raised = self.raise_to_ledger(now);
        self.apply(raised, now, store);
        let actions = self.core.tick(now);
        self.apply(actions, now, store);
        self.enforce(now, store);
        self.clear_stale_quotas();
    }

    /// A device logs in with a code (see [`State::logins`]): one login, as the tests make
    /// them.
    #[cfg(test)]
    pub(super) fn login(
        &mut self,
        client: Client,
        grant: Grant,
        now: Millis,
        store: Option<&CodeStore>,
    ) -> Result<(), Refusal> {
        self.logins(vec![(client, grant)], now, store)
            .pop()
            .unwrap_or(Err(Refusal::NotSaved))
    }

    /// Devices log in with their codes, in order; one result each. Each login is saved to
    /// disk before the kernel lets its device through and before the consumer is told
    /// "online": logins that cannot be saved (a full disk) are refused and undone, because
    /// were they confirmed, a crash would bring back the state before them and the bytes the
    /// devices then used would be billed to whatever they had before. Logins that arrive
    /// together (a class arriving) share one save and one counter reading, which is what
    /// makes a crowd fast; the counters are read only if a login cuts off or re-allows a
    /// device the kernel holds (whose counter must be read first).
    pub(super) fn logins(
        &mut self,
        logins: Vec<(Client, Grant)>,
        now: Millis,
        store: Option<&CodeStore>,
    ) -> Vec<Result<(), Refusal>> {
        let held: Vec<bool> = logins
            .iter()
            .map(|(client, grant)| self.address_held(*client, &grant.code, now))
            .collect();
        let before = self.core.clone();
        let mut accepted = self.accept_all(&logins, &held, now);
        let touches_the_kernel = accepted
            .iter()
            .flatten()
            .flatten()
            .any(|action| match action {
                Action::Allow { client, .. } | Action::Revoke { client, .. } => {
                    self.kernel.holds(client)
                }
                Action::SessionEnded { .. } => true,
            });
        if touches_the_kernel {
            self.core = before.clone();
            self.settle(now, store);
            accepted = self.accept_all(&logins, &held, now);
        }
        if accepted.iter().any(Result::is_ok) && self.save(now).is_err() {
            // Nothing reached the kernel yet: putting the core back undoes the logins.
            self.core = before;
            return accepted
                .into_iter()
                .map(|result| result.and(Err(Refusal::NotSaved)))
                .collect();
        }
        let mut results = Vec::with_capacity(logins.len());
        let mut actions = Vec::new();
        for result in accepted {
            match result {
                Ok(these) => {
                    actions.extend(these);
                    results.push(Ok(()));
                }
                Err(refused) => results.push(Err(refused)),
            }
        }
        self.apply(actions, now, store);
        for ((client, _), result) in logins.iter().zip(&mut results) {
            if result.is_ok() && !self.kernel.holds(client) {
                // Told "online", the device would find nothing open: it leaves the
                // session (which stays, for its next try).
                let kicked = self.core.kick(client.mac, now);
                self.apply(kicked, now, store);
                *result = Err(Refusal::NotEnforced);
            }
        }
        // The kernel's new baselines; the logins themselves are already on disk.
        self.persist(now);
        results
    }

    /// The core's answer to each login, in order; those whose address is `held` are
    /// refused.
    fn accept_all(
        &mut self,
        logins: &[(Client, Grant)],
        held: &[bool],
        now: Millis,
    ) -> Vec<Result<Vec<Action>, Refusal>> {
        logins
            .iter()
            .zip(held)
            .map(|((client, grant), &held)| {
                if held {
                    return Err(Refusal::AddressHeld);
                }
                self.core.accept_code(*client, grant.clone(), now)
            })
            .collect()
    }

    /// Whether `client`'s address is held by an online device of a session other than
    /// `code`'s whose probe has not failed (see [`Guard::login`]); if so the holder is
    /// probed and the attempt logged. While the holder's probe runs, any login with the
    /// address waits: the portal found the MAC in the table, which then names the holder
    /// (pointed back at it) even when the claimant is the one at the portal, and that
    /// login would move the holder's device to the claimant's code.
    fn address_held(&mut self, client: Client, code: &AccessCode, now: Millis) -> bool {
        let Some(holder) = self.core.status_of(client.ip, now) else {
            return false;
        };
        if self.lan.probing(client.ip, holder.mac) {
            return true;
        }
        if holder.mac == client.mac || holder.code == *code {
            return false;
        }
        self.lan.login_waits(client, holder.mac, now)
    }
}
