//! `edgeshare-gateway run`: the async shell around the pure session core. It owns the
//! firewall, feeds the core the kernel's byte counters once a second, carries out the core's
//! actions, serves the portal and the control socket, and keeps the state on disk so that a
//! restart or `kill -9` keeps online clients online with the quota they had.
//!
//! Locking: one `std::sync::Mutex` guards the core and the firewall together, so the kernel
//! set always follows the core's decisions in order. nft calls block for milliseconds, so
//! everything that holds the lock runs on tokio's blocking pool.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, bail};
use edgeshare_shared::backend::HttpClient;
use edgeshare_shared::backend::crowd::CrowdClient;
use edgeshare_shared::code::{AccessCode, redact};
use edgeshare_shared::control::{ClientUsage, Flows, LiveUsage};
use edgeshare_shared::ledger::{LedgerLimits, LedgerWriter, UsageRecord, UsageUpdate};
use serde::{Deserialize, Serialize};

use crate::audit::{Audit, DriftFound};
use crate::capture::{Capture, CaptureSettings, Report};
use crate::codes::{BackendCodes, CodeStore, Verdict};
use crate::config::{CodeSource, GatewayConfig};
use crate::control::{self, Reply, Request};
use crate::core::{Action, Core, EndReason, Grant, Policy, Recorded, Refusal, Snapshot, Usage};
use crate::firewall::{Cidr, Firewall, GardenEntry, NetlinkFirewall, split_garden_port};
use crate::net::{Client, Millis};
use crate::portal::{self, ClientStatus, Gate, PortalSettings, Redeem};
use crate::report::{self, FlowBook, GatewayFigures};

/// How often kernel counters are read and the core ticks.
const TICK: Duration = Duration::from_secs(1);
/// The largest IP packet the kernel forwards (a GRO/GSO super-packet): a session's kernel
/// quota can only be used up once what it has left is below this, so only then does the
/// daemon ask the kernel whether it is.
const LARGEST_PACKET: u64 = 64 * 1024;
/// Wake this long after a code's expiry, so that by the clock the core reads it has passed.
const EXPIRY_MARGIN: Duration = Duration::from_millis(5);
/// The shortest time between two rounds of the main loop.
const MIN_WAKE: Duration = Duration::from_millis(50);
/// How long the kernel keeps a client after its code's expiry. While the daemon runs, its
/// tick (at most [`TICK`] after expiry) reads the client's last bytes and cuts it off; the
/// kernel's own timeout, which would delete the element and its counter unread, is only the
/// safety net for a daemon that is down.
const KERNEL_GRACE: Duration = Duration::from_secs(2);
/// Most flow tallies kept for the agent between two of its `flows` requests.
const FLOW_BOOK_LIMIT: usize = 50_000;
/// How often the capture meter reports.
const CAPTURE_REPORT_EVERY: Duration = Duration::from_secs(1);
/// How often the table is checked (someone may flush the ruleset).
const REPAIR_EVERY: Duration = Duration::from_secs(5);
/// Longest time between two saves of the session state while only usage changes. Usage
/// needs no prompt save: after a crash the kernel's counters minus the saved baselines give
/// exactly what was used since (see [`Persisted`]). Sessions starting or ending are saved at
/// once, before the consumer or operator is answered.
const SAVE_EVERY: Duration = Duration::from_secs(5);
/// How often live usage is written to the local code store (for `codes list`) and codes
/// revoked there are cut off (for a `codes revoke` the daemon did not hear about).
const STORE_SYNC_EVERY: Duration = Duration::from_secs(30);
/// How long one walled-garden host is given to resolve: at boot there may be no DNS yet, and
/// the gateway starts without the host rather than wait (it is retried in the background).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// What is saved to `sessions.json`. The core's usage figures and the kernel counter
/// baselines are saved together, so after a crash the bytes the kernel counted since the
/// save are still the difference between its counters and these baselines: none is lost
/// and none is counted twice.
#[derive(Debug, Serialize, Deserialize)]
struct Persisted {
    core: Snapshot,
    baselines: Vec<(Client, Usage)>,
    /// When this was saved: the core is restored as of then, so that the bytes counted
    /// while the daemon was down are recorded before sessions that expired meanwhile end.
    saved_at: Millis,
}

/// Why [`State::login`] did not let a device in.
#[derive(Debug)]
enum LoginError {
    /// The core refused the code.
    Refused(Refusal),
    /// The state could not be saved; nothing changed.
    NotSaved,
}

/// Where codes are checked.
#[derive(Debug)]
enum Codes {
    Local(CodeStore),
    Backend(BackendCodes),
}

/// The core and the firewall, always changed together.
struct State {
    core: Core,
    firewall: Box<dyn Firewall>,
    /// Kernel byte counters of each allowed client when last read.
    baselines: HashMap<Client, Usage>,
    /// Something worth saving changed since the last save.
    dirty: bool,
    /// A session started or ended since the last save: save now, not at the next interval.
    urgent: bool,
    /// The devices each session's kernel quota was last set for.
    quotas: HashMap<AccessCode, Vec<Client>>,
    /// Where the state is saved (`sessions.json`).
    file: PathBuf,
    last_saved: Millis,
    /// The capture meter (`None` when off or it could not start) and its comparison with
    /// the kernel's counters.
    capture: Option<Capture>,
    audit: Option<Audit>,
    /// Flow tallies waiting for the agent.
    flows: FlowBook,
    /// Each online client's bytes at the last counter reading, and how long that reading
    /// covered: the live rates of `usage`.
    rates: HashMap<Client, Usage>,
    rate_window: Duration,
    last_settle: Option<Millis>,
    /// The usage ledger the agent reports from (`None` in tests that do not look at it).
    ledger: Option<LedgerWriter>,
    /// Final records of ended sessions not yet in the ledger.
    ledger_pending: Vec<UsageUpdate>,
}

struct Shared {
    state: Mutex<State>,
    codes: Codes,
    started: Millis,
    lan: String,
    portal_url: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the core as it was after its last complete
        // call, which is consistent: carry on rather than take the gateway down.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    /// The state as it was saved (a fresh one without a save), and the actions the restored
    /// core asks for; [`State::resume`] carries them out. The core is restored as of the
    /// save, so that `resume` can record what the kernel counted meanwhile first.
    fn restored(
        policy: Policy,
        saved: Option<Persisted>,
        firewall: Box<dyn Firewall>,
        file: PathBuf,
        now: Millis,
    ) -> (State, Vec<Action>) {
        let (core, actions, baselines) = match saved {
            Some(saved) => {
                let (core, actions) = Core::restore(policy, saved.core, saved.saved_at.min(now));
                (core, actions, saved.baselines.into_iter().collect())
            }
            None => (Core::new(policy), Vec::new(), HashMap::new()),
        };
        let state = State {
            core,
            firewall,
            baselines,
            dirty: true,
            urgent: false,
            quotas: HashMap::new(),
            file,
            last_saved: now,
            capture: None,
            audit: None,
            flows: FlowBook::new(FLOW_BOOK_LIMIT),
            rates: HashMap::new(),
            rate_window: TICK,
            last_settle: None,
            ledger: None,
            ledger_pending: Vec::new(),
        };
        (state, actions)
    }

    /// Carries out the core's actions on the firewall (and the local code store).
    fn apply(&mut self, actions: Vec<Action>, now: Millis, store: Option<&CodeStore>) {
        // Most ticks decide nothing; the quota sync below walks every session.
        if actions.is_empty() {
            return;
        }
        let mut ended = Vec::new();
        for action in actions {
            match action {
                Action::Allow { client, until } => {
                    self.allow(client, until, now);
                    self.urgent = true;
                }
                Action::Revoke { client, reason } => {
                    tracing::info!(%client, ?reason, "client cut off");
                    if let Err(err) = self.firewall.revoke(&client) {
                        tracing::error!(%client, error = %err, "cannot cut a client off");
                    }
                    self.baselines.remove(&client);
                    self.rates.remove(&client);
                    self.urgent = true;
                }
                Action::SessionEnded {
                    code,
                    started_at,
                    reason,
                    used_bytes,
                    up_bytes,
                } => {
                    let session = session_id(&code, started_at);
                    tracing::info!(%session, ?reason, used_bytes, up_bytes, "session ended");
                    self.ledger_pending.push(UsageUpdate {
                        session,
                        code: code.as_str().to_owned(),
                        up: up_bytes,
                        down: used_bytes.saturating_sub(up_bytes),
                        ended: Some(reason.as_str().to_owned()),
                    });
                    ended.push((code, used_bytes));
                    self.urgent = true;
                }
            }
        }
        self.dirty |= self.urgent;
        self.sync_quotas();
        self.meters_follow_clients();
        if !self.ledger_pending.is_empty() {
            self.write_ledger(Vec::new());
        }
        if let Some(store) = store {
            if let Err(err) = store.record_usage(&ended) {
                tracing::error!(error = %err, "cannot record final usage in the code store");
            }
        }
    }

    /// Keeps each session's kernel quota in step with its devices: set to what is left when
    /// they change, cleared when the session has none or has ended. A
    /// quota left behind would block a captive device's DNS and portal too. Setting restarts
    /// the kernel's count, so callers settle the counters first (they do before any action).
    fn sync_quotas(&mut self) {
        let mut live = HashSet::new();
        for session in self.core.sessions() {
            let mut clients: Vec<Client> = session.devices.iter().map(|d| d.client).collect();
            clients.sort();
            if clients.is_empty() {
                continue;
            }
            live.insert(session.code.clone());
            if self.quotas.get(&session.code) == Some(&clients) {
                continue;
            }
            let left = session.quota_bytes.saturating_sub(session.used_bytes);
            let id = quota_id(&session.code);
            match self.firewall.set_quota(&id, &clients, left) {
                Ok(()) => {
                    self.quotas.insert(session.code, clients);
                }
                Err(err) => tracing::error!(error = %err, "cannot set a session's kernel quota"),
            }
        }
        let gone: Vec<AccessCode> = self
            .quotas
            .keys()
            .filter(|code| !live.contains(*code))
            .cloned()
            .collect();
        for code in gone {
            match self.firewall.clear_quota(&quota_id(&code)) {
                Ok(()) => {
                    self.quotas.remove(&code);
                }
                Err(err) => tracing::error!(error = %err, "cannot clear a session's kernel quota"),
            }
        }
    }

    /// Lets a client through until `until` (plus [`KERNEL_GRACE`] in the kernel). Adding an
    /// element restarts its kernel counter at zero, so its baseline does too (the caller has
    /// settled the old counter first).
    fn allow(&mut self, client: Client, until: Millis, now: Millis) {
        match self
            .firewall
            .allow(&client, now.until(until) + KERNEL_GRACE)
        {
            Ok(()) => {
                self.baselines.insert(client, Usage::default());
            }
            Err(err) => tracing::error!(%client, error = %err, "cannot let a client through"),
        }
    }

    /// Reads the kernel counters and hands the core the bytes since the last read. Called
    /// before anything that may cut a client off (a tick, a kick, a revoke, a login that
    /// moves a session), because a removed element takes its counter with it: bytes not
    /// read before the cut would be lost.
    /// Returns the clients the kernel lets through, or `None` if it could not be asked.
    fn settle(&mut self, now: Millis, store: Option<&CodeStore>) -> Option<HashSet<Client>> {
        let counters = match self.firewall.clients() {
            Ok(counters) => counters,
            Err(err) => {
                tracing::error!(error = %err, "cannot read the kernel counters");
                return None;
            }
        };
        let mut deltas = Vec::new();
        let mut seen = HashMap::new();
        for c in counters {
            let now_counted = Usage {
                up: c.up_bytes,
                down: c.down_bytes,
            };
            let before = self.baselines.get(&c.client).copied().unwrap_or_default();
            // A counter below its baseline was reset behind our back (the element was added
            // again, the table restored after a flush): it counts from zero.
            let reset = now_counted.up < before.up || now_counted.down < before.down;
            let delta = if reset {
                now_counted
            } else {
                Usage {
                    up: now_counted.up - before.up,
                    down: now_counted.down - before.down,
                }
            };
            if delta.total() > 0 {
                deltas.push((c.client, delta));
            }
            seen.insert(c.client, now_counted);
        }
        if !deltas.is_empty() {
            self.dirty = true;
        }
        let present: HashSet<Client> = seen.keys().copied().collect();
        self.baselines = seen;
        if let Some(last) = self.last_settle {
            self.rate_window = last.until(now).max(Duration::from_millis(1));
        }
        self.last_settle = Some(now);
        self.rates = deltas.iter().copied().collect();
        if let Some(audit) = &mut self.audit {
            let online: Vec<Client> = present.iter().copied().collect();
            warn_drift(&audit.kernel(&deltas, &online));
        }
        let actions = self.core.record_usage(&deltas, now);
        self.apply(actions, now, store);
        Some(present)
    }

    /// Usage first, then expiry and idle checks: bytes used just before expiry still count.
    fn tick(&mut self, now: Millis, store: Option<&CodeStore>) {
        self.settle(now, store);
        self.end_used_up(now, store);
        let actions = self.core.tick(now);
        self.apply(actions, now, store);
    }

    /// Ends the sessions whose kernel quota is used up. The kernel drops the packet that would
    /// pass a quota, so the counters stop just short of it and the core cannot see the end by
    /// itself; only sessions with less than one packet left can be there, so the kernel is
    /// asked only about those (most ticks, none).
    fn end_used_up(&mut self, now: Millis, store: Option<&CodeStore>) {
        let near: Vec<AccessCode> = self
            .core
            .sessions()
            .into_iter()
            .filter(|s| s.quota_bytes.saturating_sub(s.used_bytes) < LARGEST_PACKET)
            .filter(|s| self.quotas.contains_key(&s.code))
            .map(|s| s.code)
            .collect();
        if near.is_empty() {
            return;
        }
        let listed = match self.firewall.list_quotas() {
            Ok(listed) => listed,
            Err(err) => {
                tracing::error!(error = %err, "cannot read the session quotas");
                return;
            }
        };
        let used_up: Vec<AccessCode> = near
            .into_iter()
            .filter(|code| {
                listed
                    .get(&quota_id(code))
                    .is_some_and(|q| q.used_bytes >= q.limit_bytes)
            })
            .collect();
        if used_up.is_empty() {
            return;
        }
        // Packets forwarded since the last reading are in the counters, not yet in the
        // sessions: read them before the cut takes the counters away.
        self.settle(now, store);
        for code in used_up {
            let actions = self.core.quota_reached(&code, now);
            self.apply(actions, now, store);
        }
    }

    /// Puts the kernel set in step with the core: clients the core does not know are cut
    /// off, clients it allows but the kernel lacks are added. Clients already there are left
    /// alone: re-adding would restart their counters and lose what they hold.
    fn reconcile(&mut self, now: Millis) {
        let allowed: HashMap<Client, Millis> = self.core.allowed().into_iter().collect();
        let in_kernel: HashSet<Client> = match self.firewall.clients() {
            Ok(list) => list.into_iter().map(|c| c.client).collect(),
            Err(err) => {
                tracing::error!(error = %err, "cannot list the kernel's clients");
                return;
            }
        };
        for client in &in_kernel {
            if !allowed.contains_key(client) {
                tracing::info!(%client, "removing a client the sessions do not know");
                if let Err(err) = self.firewall.revoke(client) {
                    tracing::error!(%client, error = %err, "cannot remove a stale client");
                }
                self.baselines.remove(client);
            }
        }
        for (client, until) in allowed {
            if !in_kernel.contains(&client) {
                self.allow(client, until, now);
            }
        }
        self.meters_follow_clients();
    }

    /// Tells the capture meter and the audit which clients are let through now.
    fn meters_follow_clients(&mut self) {
        let online: Vec<Client> = self.core.allowed().into_iter().map(|(c, _)| c).collect();
        if let Some(audit) = &mut self.audit {
            audit.set_online(&online);
        }
        if let Some(capture) = &self.capture {
            capture.set_clients(online);
        }
    }

    /// A report of the capture meter: checked against the kernel's counts, flows kept for
    /// the agent.
    fn capture_report(&mut self, report: &Report) {
        if report.kernel.drops > 0 {
            tracing::warn!(
                dropped = report.kernel.drops,
                received = report.kernel.packets,
                "the capture meter lost packets (its socket buffer was full): raise capture.buffer_bytes; billing is unaffected (the kernel counters bill)"
            );
        }
        if let Some(audit) = &mut self.audit {
            warn_drift(&audit.capture(
                &report.batch.clients,
                report.kernel,
                report.batch.untracked_packets,
            ));
        }
        self.flows.add(&report.batch.flows);
    }

    /// Every online device's usage in its session, with its rates over the last reading.
    fn live_usage(&self) -> LiveUsage {
        let window = self.rate_window.as_secs_f64();
        let mut clients = Vec::new();
        for session in self.core.sessions() {
            let id = session_id(&session.code, session.started_at);
            for device in session.devices {
                let rate = self.rates.get(&device.client).copied().unwrap_or_default();
                clients.push(ClientUsage {
                    mac: device.client.mac.to_string(),
                    ip: device.client.ip,
                    session: id.clone(),
                    up_bytes: device.up_bytes,
                    down_bytes: device.used_bytes.saturating_sub(device.up_bytes),
                    up_rate: rate.up as f64 / window,
                    down_rate: rate.down as f64 / window,
                });
            }
        }
        LiveUsage {
            at_ms: self.last_settle.unwrap_or_default().0,
            clients,
        }
    }

    /// The Prometheus text of the metrics endpoint.
    fn metrics(&self, capture_interface: &str) -> String {
        let sessions = self.core.sessions();
        let billed: Vec<(Client, Usage)> = sessions
            .iter()
            .flat_map(|s| &s.devices)
            .map(|d| {
                (
                    d.client,
                    Usage {
                        up: d.up_bytes,
                        down: d.used_bytes.saturating_sub(d.up_bytes),
                    },
                )
            })
            .collect();
        let figures = GatewayFigures {
            sessions: sessions.len(),
            online: billed.len(),
            unattributed_bytes: self.core.unattributed_bytes(),
            billed: &billed,
            capture_interface: self.capture.as_ref().map(|_| capture_interface),
            capture_buffer_bytes: self.capture.as_ref().map_or(0, |c| c.buffer_bytes),
            flows_dropped: self.flows.dropped,
        };
        report::metrics_text(&figures, self.audit.as_ref())
    }

    /// Picks up after a restart: the bytes the kernel counted while the daemon was down go
    /// to their sessions first, then the restored core's decisions are carried out (clients
    /// still in the kernel are not re-added), then expiry and idle checks run at `now`.
    fn resume(&mut self, restored: Vec<Action>, now: Millis, store: Option<&CodeStore>) {
        let present = self.settle(now, store).unwrap_or_default();
        let actions = restored
            .into_iter()
            .filter(|a| !matches!(a, Action::Allow { client, .. } if present.contains(client)))
            .collect();
        self.apply(actions, now, store);
        let raised = self.raise_to_ledger(now);
        self.apply(raised, now, store);
        let actions = self.core.tick(now);
        self.apply(actions, now, store);
        self.reconcile(now);
        self.sync_quotas();
    }

    /// Restores our table if someone removed it (a firewall reload, `nft flush ruleset`),
    /// with every online client back in it. Their counters restart at zero, which
    /// [`State::settle`] treats as a reset; what they used since the last read is lost.
    fn repair(&mut self, now: Millis) {
        match self.firewall.is_installed() {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("our nftables table is gone (a firewall reload?); restoring it");
                match self.firewall.install() {
                    Ok(()) => {
                        self.reconcile(now);
                        // The quota objects went with the table.
                        self.quotas.clear();
                        self.sync_quotas();
                    }
                    Err(err) => tracing::error!(error = %err, "cannot restore the nftables table"),
                }
            }
            Err(err) => tracing::error!(error = %err, "cannot check the nftables table"),
        }
    }

    /// Writes the state to disk now (temp file, fsync, rename). A failure is logged here;
    /// only a login needs to act on it (see [`State::login`]).
    fn save(&mut self, now: Millis) -> std::io::Result<()> {
        // The ledger first: should the daemon die between the two writes, the restored core
        // is raised to the ledger's totals, never added to them (see `State::restored`).
        let live = self.live_ledger_updates();
        self.write_ledger(live);
        let persisted = self.persisted(now);
        let result = serde_json::to_vec(&persisted)
            .map_err(std::io::Error::other)
            .and_then(|json| edgeshare_shared::secret::write_private(&self.file, &json));
        match &result {
            Ok(()) => {
                self.dirty = false;
                self.urgent = false;
                self.last_saved = now;
            }
            Err(err) => {
                tracing::error!(path = %self.file.display(), error = %err, "cannot save the session state (is the state directory's disk full or read-only?)");
            }
        }
        result
    }

    /// A device logs in with a code: saved to disk before the kernel lets it through and
    /// before the consumer is told "online". A login that cannot be saved (a full disk) is
    /// refused and undone: were it confirmed, a crash would bring back the state before it,
    /// and the bytes the device then used would be billed to whatever it had before.
    fn login(
        &mut self,
        client: Client,
        grant: Grant,
        now: Millis,
        store: Option<&CodeStore>,
    ) -> Result<(), LoginError> {
        self.settle(now, store);
        let before = self.core.clone();
        let actions = self
            .core
            .accept_code(client, grant, now)
            .map_err(LoginError::Refused)?;
        if self.save(now).is_err() {
            // Nothing reached the kernel yet: putting the core back undoes the login.
            self.core = before;
            return Err(LoginError::NotSaved);
        }
        self.apply(actions, now, store);
        // The kernel's new baselines; the login itself is already on disk.
        self.persist(now);
        Ok(())
    }

    /// Saves at once if a session started or ended (callers answer only after this, so what
    /// they confirm survives a crash), else if usage changed and the last save is old.
    fn persist(&mut self, now: Millis) {
        if self.urgent || (self.dirty && self.last_saved.until(now) >= SAVE_EVERY) {
            // Logged by `save`; the next persist tries again.
            let _ = self.save(now);
        }
    }

    /// Writes live sessions' usage to the local code store, and cuts off codes revoked there
    /// (a `codes revoke` while the daemon was down, or one it did not hear about).
    fn sync_store(&mut self, store: &CodeStore, now: Millis) {
        let sessions = self.core.sessions();
        let usage: Vec<(AccessCode, u64)> = sessions
            .iter()
            .map(|s| (s.code.clone(), s.used_bytes))
            .collect();
        if let Err(err) = store.record_usage(&usage) {
            tracing::error!(error = %err, "cannot record usage in the code store");
        }
        let revoked: Vec<AccessCode> = match store.list() {
            Ok(codes) => codes
                .into_iter()
                .filter(|c| c.revoked && sessions.iter().any(|s| s.code == c.code))
                .map(|c| c.code)
                .collect(),
            Err(err) => {
                tracing::error!(error = %err, "cannot read the code store");
                return;
            }
        };
        if !revoked.is_empty() {
            self.settle(now, Some(store));
        }
        for code in revoked {
            tracing::info!(code = %redact(code.as_str()), "code revoked in the store; cutting its devices off");
            let actions = self.core.revoke_code(&code, now);
            self.apply(actions, now, Some(store));
        }
    }

    /// With no saved state (`sessions.json` damaged or lost), the sessions as the ledger
    /// recorded them (see [`Core::rebuild`]): a used-up code stays used up, a partly used one
    /// keeps its bytes. The local store's figures are raised to the ledger's, so that the
    /// code's remaining bytes count what the lost state had not yet written there.
    fn rebuild_from_ledger(&mut self, now: Millis, store: Option<&CodeStore>) {
        let Some(ledger) = &self.ledger else {
            return;
        };
        let mut latest: Vec<&UsageRecord> = ledger.sessions().collect();
        if latest.is_empty() {
            // A first start: nothing to rebuild.
            return;
        }
        latest.sort_by_key(|r| r.seq);
        let recorded: Vec<Recorded> = latest
            .into_iter()
            .filter_map(|r| {
                // The id is `<quota id>-<start in ms>` (see `session_id`).
                let started_at = r.session.rsplit_once('-')?.1.parse().ok()?;
                Some(Recorded {
                    code: AccessCode::parse(&r.code).ok()?,
                    started_at: Millis(started_at),
                    at: Millis(r.at_ms),
                    usage: Usage {
                        up: r.up,
                        down: r.down,
                    },
                    ended: r.ended.as_deref().and_then(EndReason::parse),
                })
            })
            .collect();
        self.core = Core::rebuild(*self.core.policy(), &recorded, now);
        let sessions = self.core.sessions();
        tracing::warn!(
            live = sessions.len(),
            recorded = recorded.len(),
            "no saved session state: sessions rebuilt from the usage ledger (their devices enter their code again; codes used up stay used up)"
        );
        if let Some(store) = store {
            let usage: Vec<(AccessCode, u64)> = sessions
                .iter()
                .map(|s| (s.code.clone(), s.used_bytes))
                .collect();
            if let Err(err) = store.record_usage(&usage) {
                tracing::error!(error = %err, "cannot record the rebuilt sessions' usage in the code store");
            }
        }
        self.dirty = true;
        self.urgent = true;
    }

    /// Raises each live session to its last ledger record where that is higher (see
    /// [`Core::raise_usage`]).
    fn raise_to_ledger(&mut self, now: Millis) -> Vec<Action> {
        let Some(ledger) = &self.ledger else {
            return Vec::new();
        };
        let mut actions = Vec::new();
        for session in self.core.sessions() {
            let id = session_id(&session.code, session.started_at);
            let Some(record) = ledger.latest(&id) else {
                continue;
            };
            let recorded = Usage {
                up: record.up,
                down: record.down,
            };
            if recorded.total() > session.used_bytes || recorded.up > session.up_bytes {
                tracing::warn!(
                    session = %id,
                    restored_bytes = session.used_bytes,
                    ledger_bytes = recorded.total(),
                    "the ledger holds more than the saved state and the kernel counters (were the counters lost, by a reboot?); continuing from the ledger"
                );
            }
            actions.extend(
                self.core
                    .raise_usage(&session.code, session.started_at, recorded, now),
            );
        }
        actions
    }

    /// Every live session's totals now, for the ledger.
    ///
    /// A session that has used nothing yet has nothing to record, and should its login not
    /// be saved (see [`State::login`]) it never existed: the ledger must not hold it.
    fn live_ledger_updates(&self) -> Vec<UsageUpdate> {
        self.core
            .sessions()
            .into_iter()
            .filter(|s| s.used_bytes > 0)
            .map(|s| UsageUpdate {
                session: session_id(&s.code, s.started_at),
                code: s.code.as_str().to_owned(),
                up: s.up_bytes,
                down: s.used_bytes.saturating_sub(s.up_bytes),
                ended: None,
            })
            .collect()
    }

    /// Appends the ended sessions' final records waiting in `ledger_pending`, and `live`, as
    /// one batch (one fsync). On failure (a full disk, say) the final records wait for the
    /// next try; live totals need no retry, the next save carries them (they are cumulative).
    fn write_ledger(&mut self, live: Vec<UsageUpdate>) {
        let Some(ledger) = &mut self.ledger else {
            return;
        };
        let mut batch = std::mem::take(&mut self.ledger_pending);
        let finals = batch.len();
        batch.extend(live);
        if let Err(err) = ledger.append(&batch) {
            tracing::error!(error = %err, "cannot write the usage ledger; retrying at the next save");
            batch.truncate(finals);
            self.ledger_pending = batch;
        }
    }

    fn persisted(&self, now: Millis) -> Persisted {
        Persisted {
            core: self.core.snapshot(),
            baselines: self.baselines.iter().map(|(c, b)| (*c, *b)).collect(),
            saved_at: now,
        }
    }
}

/// The name of a session's kernel quota: derived from the code so it is the same after a
/// restart, but not the code itself (the ruleset is readable to anyone with CAP_NET_ADMIN).
fn quota_id(code: &AccessCode) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(code.as_str().as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A session's id in the ledger, logs and `usage`: its quota id and start, not the code.
fn session_id(code: &AccessCode, started_at: Millis) -> String {
    format!("{}-{}", quota_id(code), started_at.0)
}

fn warn_drift(found: &[DriftFound]) {
    for drift in found {
        let who = drift
            .client
            .map_or_else(|| "all clients".to_owned(), |c| c.to_string());
        tracing::warn!(
            client = %who,
            kernel_bytes = drift.pair.kernel.total(),
            capture_bytes = drift.pair.capture.total(),
            drift_percent = drift.ratio * 100.0,
            "the capture meter and the kernel counters disagree by more than 0.1% (billing follows the kernel counters)"
        );
    }
}

fn policy(config: &GatewayConfig) -> Policy {
    Policy {
        devices_per_code: config.session.devices_per_code,
        idle_timeout: (!config.session.idle_timeout.is_zero())
            .then_some(config.session.idle_timeout),
        max_session: config.session.max_duration,
    }
}

/// The first IPv4 address of an interface, from `ip -j -4 addr show dev IFACE`.
fn interface_ipv4(interface: &str) -> anyhow::Result<Ipv4Addr> {
    let out = std::process::Command::new("ip")
        .args(["-j", "-4", "addr", "show", "dev", interface])
        .output()
        .context("running `ip` (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!(
            "lan.interface {interface}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_ipv4(&out.stdout).with_context(|| {
        format!("lan.interface {interface} has no IPv4 address; give it one (the portal is served on it) and start again")
    })
}

fn parse_ipv4(ip_json: &[u8]) -> Option<Ipv4Addr> {
    parse_addresses(ip_json)
        .into_iter()
        .find_map(|ip| match ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
}

/// Every address in `ip -j addr` output.
fn parse_addresses(ip_json: &[u8]) -> Vec<IpAddr> {
    #[derive(Deserialize)]
    struct Link {
        #[serde(default)]
        addr_info: Vec<AddrInfo>,
    }
    #[derive(Deserialize)]
    struct AddrInfo {
        local: Option<String>,
    }
    let links: Vec<Link> = serde_json::from_slice(ip_json).unwrap_or_default();
    links
        .iter()
        .flat_map(|l| &l.addr_info)
        .filter_map(|a| a.local.as_deref()?.parse().ok())
        .collect()
}

/// The gateway's own addresses on every interface: traffic to them is delivered here, not
/// forwarded, so the capture meter must not bill it. Read once at start; an uplink that gets
/// a new address later only matters for traffic aimed at the gateway's WAN address.
fn local_addresses() -> anyhow::Result<Vec<IpAddr>> {
    let out = std::process::Command::new("ip")
        .args(["-j", "addr", "show"])
        .output()
        .context("running `ip -j addr show` (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!(
            "ip -j addr show: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(parse_addresses(&out.stdout))
}

/// Starts the capture meter on the LAN interface; its reports come through `reports`. A
/// capture that cannot start is logged, not fatal: billing runs on the kernel's counters.
fn start_capture(
    config: &GatewayConfig,
    reports: tokio::sync::mpsc::UnboundedSender<Report>,
) -> Option<Capture> {
    if !config.capture.enabled {
        tracing::info!("the capture meter is off (capture.enabled = false)");
        return None;
    }
    let local = match local_addresses() {
        Ok(local) => local,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "the capture meter cannot start");
            return None;
        }
    };
    let settings = CaptureSettings {
        interface: config.lan.interface.clone(),
        buffer_bytes: config.capture.buffer_bytes,
        local,
        max_flows: config.capture.max_flows,
        max_clients: 1024,
        flow_idle: config.capture.flow_idle,
        report_every: CAPTURE_REPORT_EVERY,
    };
    match Capture::start(settings, move |report| {
        // Only fails once the daemon is stopping.
        let _ = reports.send(report);
    }) {
        Ok(capture) => {
            tracing::info!(
                interface = %config.lan.interface,
                buffer_bytes = capture.buffer_bytes,
                "capture meter running"
            );
            Some(capture)
        }
        Err(err) => {
            tracing::error!(
                interface = %config.lan.interface,
                error = %err,
                "the capture meter cannot start (needs CAP_NET_RAW); billing goes on with the kernel counters alone"
            );
            None
        }
    }
}

/// Serves `GET /metrics` (Prometheus text) on `listen` until `stop`.
async fn serve_metrics(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let shared = shared.clone();
            async move {
                let text = tokio::task::spawn_blocking(move || shared.lock().metrics(&shared.lan))
                    .await
                    .unwrap_or_default();
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    text,
                )
            }
        }),
    );
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    if let Err(err) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %err, "the metrics endpoint failed");
    }
}

/// A walled-garden host name still to resolve, with the TCP port it is opened on.
type GardenHost = (String, u16);

/// The walled garden's entries: configured ones (each on its port) and the backend's host on
/// its URL's port when codes are checked there; networks as they are, host names to resolve.
fn garden_entries(config: &GatewayConfig) -> anyhow::Result<(Vec<GardenEntry>, Vec<GardenHost>)> {
    let mut entries: Vec<GardenHost> = Vec::new();
    for entry in &config.portal.walled_garden {
        let (host, port) = split_garden_port(entry)
            .with_context(|| format!("portal.walled_garden: \"{entry}\""))?;
        entries.push((host.to_owned(), port));
    }
    if let (CodeSource::Backend, Some(backend)) = (config.codes.source, &config.backend) {
        if let (Some(host), Some(port)) =
            (backend.url.host_str(), backend.url.port_or_known_default())
        {
            entries.push((host.trim_matches(['[', ']']).to_owned(), port));
        }
    }
    let mut garden = Vec::new();
    let mut hosts = Vec::new();
    for (host, port) in entries {
        match host.parse::<Cidr>() {
            Ok(net) => garden.push(GardenEntry { net, port }),
            Err(_) => hosts.push((host, port)),
        }
    }
    Ok((garden, hosts))
}

/// Resolves `hosts`, each given [`RESOLVE_TIMEOUT`]: their addresses on their ports, and the
/// hosts that did not resolve (each logged with why).
async fn resolve_garden(hosts: &[GardenHost]) -> (Vec<GardenEntry>, Vec<GardenHost>) {
    let mut found = Vec::new();
    let mut unresolved = Vec::new();
    for (host, port) in hosts {
        let lookup = tokio::net::lookup_host((host.as_str(), *port));
        let error = match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
            Ok(Ok(addrs)) => {
                found.extend(addrs.map(|addr| GardenEntry {
                    net: Cidr::host(addr.ip()),
                    port: *port,
                }));
                continue;
            }
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("no answer within {RESOLVE_TIMEOUT:?}"),
        };
        tracing::warn!(
            host = %host,
            error = %error,
            "portal.walled_garden: cannot resolve this host (no DNS yet?); captive devices cannot reach it until it resolves, retrying in the background"
        );
        unresolved.push((host.clone(), *port));
    }
    (found, unresolved)
}

/// Resolves the garden's hosts that did not resolve at start, backing off up to a minute,
/// and adds each to the table as soon as it resolves (a fresh install of our table, which
/// replaces only the garden sets: online devices stay). Ends when all resolved, or at stop.
async fn resolve_garden_later(
    config: GatewayConfig,
    mut garden: Vec<GardenEntry>,
    mut unresolved: Vec<GardenHost>,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut delay = Duration::from_secs(1);
    while !unresolved.is_empty() {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(60));
        let (found, still) = resolve_garden(&unresolved).await;
        if found.is_empty() {
            continue;
        }
        garden.extend(found);
        let resolved: Vec<String> = unresolved
            .iter()
            .filter(|h| !still.contains(h))
            .map(|(host, _)| host.clone())
            .collect();
        unresolved = still;
        let firewall = NetlinkFirewall::new(config.firewall_config(garden.clone()));
        let shared = shared.clone();
        let installed = tokio::task::spawn_blocking(move || {
            let mut state = shared.lock();
            state.firewall = Box::new(firewall);
            state.firewall.install()
        })
        .await;
        match installed {
            Ok(Ok(())) => {
                tracing::info!(hosts = ?resolved, "walled garden hosts resolved; captive devices may reach them now")
            }
            Ok(Err(err)) => {
                tracing::error!(error = %err, "cannot add the resolved walled garden hosts to the table; the repair loop installs it again")
            }
            Err(err) => tracing::error!(error = %err, "the walled garden update failed"),
        }
    }
}

fn enable_forwarding() -> anyhow::Result<()> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .context("turning on IPv4 forwarding (/proc/sys/net/ipv4/ip_forward)")
}

fn load_state(path: &PathBuf) -> anyhow::Result<Option<Persisted>> {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(state) => Ok(Some(state)),
            Err(err) => {
                // A torn file cannot happen (atomic writes); a damaged one must not stop the
                // gateway: keep it for inspection and start without sessions.
                let aside = path.with_extension("json.damaged");
                tracing::error!(path = %path.display(), error = %err, "session state is damaged; moved aside, rebuilding the sessions from the usage ledger");
                std::fs::rename(path, &aside).ok();
                Ok(None)
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Runs the gateway until SIGINT or SIGTERM.
pub async fn run(config: GatewayConfig) -> anyhow::Result<()> {
    let notifier = edgeshare_shared::systemd::Notifier::from_env()?;
    let state_dir = config.state.dir.clone();
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating state.dir {}", state_dir.display()))?;
    let lan_ip = interface_ipv4(&config.lan.interface)?;
    let portal_url = format!("http://{lan_ip}:{}/", config.portal.port);
    enable_forwarding()?;

    let codes = match config.codes.source {
        CodeSource::Local => Codes::Local(CodeStore::new(&state_dir)),
        CodeSource::Backend => {
            let backend = config
                .backend
                .as_ref()
                .context("codes.source = \"backend\" needs a [backend] section")?;
            let http = HttpClient::new(&config.http)?;
            Codes::Backend(BackendCodes::new(
                CrowdClient::new(&http, backend),
                config.codes.expiry_margin,
                config.codes.own_codes_only,
            ))
        }
    };

    // A host that does not resolve yet (no DNS at boot) does not stop the gateway: it joins
    // the garden later (see `resolve_garden_later`).
    let (mut garden, garden_hosts) = garden_entries(&config)?;
    let (found, unresolved) = resolve_garden(&garden_hosts).await;
    garden.extend(found);
    let mut firewall: Box<dyn Firewall> =
        Box::new(NetlinkFirewall::new(config.firewall_config(garden.clone())));
    firewall
        .install()
        .context("installing the nftables table")?;

    let sessions_file = state_dir.join("sessions.json");
    let now = Millis::now();
    let saved = load_state(&sessions_file)?;
    let rebuild = saved.is_none();
    let (mut state, actions) =
        State::restored(policy(&config), saved, firewall, sessions_file, now);
    let group = match &config.control.group {
        Some(name) => Some(
            control::group_id(name)
                .with_context(|| format!("control.group: no group \"{name}\""))?,
        ),
        None => None,
    };
    let ledger_dir = state_dir.join("ledger");
    let mut ledger = LedgerWriter::open(&ledger_dir, LedgerLimits::default())
        .with_context(|| format!("opening the usage ledger in {}", ledger_dir.display()))?;
    if let Some(gid) = group {
        ledger
            .share_with_group(gid)
            .context("letting control.group read the usage ledger")?;
    }
    state.ledger = Some(ledger);
    let store = match &codes {
        Codes::Local(store) => Some(store.clone()),
        Codes::Backend(_) => None,
    };
    if rebuild {
        state.rebuild_from_ledger(now, store.as_ref());
    }
    state.resume(actions, now, store.as_ref());
    if let Some(store) = &store {
        state.sync_store(store, now);
    }
    // Logged by `save`; the ticks try again.
    let _ = state.save(now);
    tracing::info!(online = state.core.allowed().len(), "sessions restored");
    // Started after the resume: the bytes the kernel counted while the daemon was down have
    // no capture to compare with.
    let (report_tx, mut report_rx) = tokio::sync::mpsc::unbounded_channel();
    state.capture = start_capture(&config, report_tx);
    if state.capture.is_some() {
        state.audit = Some(Audit::default());
        state.meters_follow_clients();
    }

    let shared = Arc::new(Shared {
        state: Mutex::new(state),
        codes,
        started: now,
        lan: config.lan.interface.clone(),
        portal_url: portal_url.clone(),
    });

    let portal_listener =
        tokio::net::TcpListener::bind(SocketAddr::new(IpAddr::V4(lan_ip), config.portal.port))
            .await
            .with_context(|| format!("binding the portal to {lan_ip}:{}", config.portal.port))?;
    let control_listener = control::bind(&config.control.socket, group)
        .with_context(|| format!("binding control.socket {}", config.control.socket.display()))?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let metrics_task = if config.metrics.listen.is_empty() {
        None
    } else {
        let listener = tokio::net::TcpListener::bind(&config.metrics.listen)
            .await
            .with_context(|| format!("binding metrics.listen {}", config.metrics.listen))?;
        Some(tokio::spawn(serve_metrics(
            listener,
            shared.clone(),
            stop_rx.clone(),
        )))
    };
    let settings = PortalSettings {
        url: portal_url.clone(),
        per_client_attempts: config.portal.attempts_per_client,
        global_attempts: config.portal.attempts_global,
        window: Duration::from_secs(60),
    };
    let gate = Arc::new(PortalGate {
        shared: shared.clone(),
        store: store.clone(),
    });
    let mut portal_stop = stop_rx.clone();
    let portal_task = tokio::spawn(portal::serve(portal_listener, gate, settings, async move {
        let _ = portal_stop.wait_for(|stop| *stop).await;
    }));
    let garden_task = (!unresolved.is_empty()).then(|| {
        tokio::spawn(resolve_garden_later(
            config.clone(),
            garden,
            unresolved,
            shared.clone(),
            stop_rx.clone(),
        ))
    });
    let control_task = tokio::spawn(serve_control(
        control_listener,
        shared.clone(),
        store.clone(),
        stop_rx.clone(),
    ));
    tracing::info!(portal = %portal_url, lan = %config.lan.interface, "gateway running");

    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_repair = tokio::time::Instant::now();
    let mut last_store_sync = tokio::time::Instant::now();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    // Ready only now: the table is installed, sessions are restored, the portal and the
    // control socket listen, and a SIGTERM is handled (systemd may send one right away).
    let ready = format!("portal {portal_url} on {}", config.lan.interface);
    if let Err(err) = notifier.ready(&ready) {
        tracing::warn!(error = %err, "cannot tell systemd that the gateway is ready");
    }
    loop {
        // Besides the regular tick, wake when the next online device's code expires, so the
        // cut-off (after the final counter read) comes at expiry, not up to a tick later.
        let next_expiry = shared
            .lock()
            .core
            .allowed()
            .into_iter()
            .map(|(_, until)| until)
            .min();
        let started = tokio::time::Instant::now();
        let expiry_wake = match next_expiry {
            // Never sooner than MIN_WAKE: a deadline that cannot be cleared must not spin.
            Some(until) => started + (Millis::now().until(until) + EXPIRY_MARGIN).max(MIN_WAKE),
            None => started + TICK,
        };
        tokio::select! {
            _ = ticks.tick() => {}
            _ = tokio::time::sleep_until(expiry_wake) => {}
            Some(report) = report_rx.recv() => {
                let shared = shared.clone();
                let _ = tokio::task::spawn_blocking(move || shared.lock().capture_report(&report)).await;
                continue;
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
        let repair = last_repair.elapsed() >= REPAIR_EVERY;
        if repair {
            last_repair = tokio::time::Instant::now();
        }
        let sync = store.is_some() && last_store_sync.elapsed() >= STORE_SYNC_EVERY;
        if sync {
            last_store_sync = tokio::time::Instant::now();
        }
        let shared_for_tick = shared.clone();
        let store_for_tick = store.clone();
        let ticked = tokio::task::spawn_blocking(move || {
            let now = Millis::now();
            let mut state = shared_for_tick.lock();
            if repair {
                state.repair(now);
            }
            state.tick(now, store_for_tick.as_ref());
            if let (true, Some(store)) = (sync, &store_for_tick) {
                state.sync_store(store, now);
            }
            state.persist(now);
        })
        .await;
        if let Err(err) = ticked {
            tracing::error!(error = %err, "the tick failed");
        }
        // Petted only after a tick completed: a tick stuck in nft or on the lock stops the
        // pets, and systemd's watchdog restarts the daemon.
        if let Err(err) = notifier.watchdog() {
            tracing::warn!(error = %err, "cannot pet systemd's watchdog");
        }
    }

    tracing::info!("stopping");
    if let Err(err) = notifier.stopping("stopping: saving the sessions") {
        tracing::warn!(error = %err, "cannot tell systemd that the gateway is stopping");
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(3), portal_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), control_task).await;
    if let Some(task) = metrics_task {
        let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
    }
    if let Some(task) = garden_task {
        let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
    }
    let shared_for_exit = shared.clone();
    let remove = config.firewall.remove_on_exit;
    tokio::task::spawn_blocking(move || {
        let mut state = shared_for_exit.lock();
        // Joins the capture thread (within its read timeout).
        state.capture = None;
        state.settle(Millis::now(), None);
        // Logged by `save`: what the kernel counted since the last save still goes to its
        // session at the next start (the baselines on disk are older).
        let _ = state.save(Millis::now());
        if remove {
            if let Err(err) = state.firewall.uninstall() {
                tracing::error!(error = %err, "cannot remove the nftables table");
            }
        }
    })
    .await
    .ok();
    std::fs::remove_file(&config.control.socket).ok();
    Ok(())
}

/// The portal's view of the daemon.
struct PortalGate {
    shared: Arc<Shared>,
    store: Option<CodeStore>,
}

impl PortalGate {
    fn status_now(&self, ip: IpAddr) -> Option<ClientStatus> {
        let now = Millis::now();
        let state = self.shared.lock();
        state.core.status_of(ip, now).map(|s| ClientStatus {
            bytes_left: s.bytes_left,
            seconds_left: now.until(s.expires_at).as_secs(),
            code_expires: s.code_expires,
        })
    }
}

impl Gate for PortalGate {
    async fn redeem(&self, ip: IpAddr, code: AccessCode) -> Redeem {
        let Some(mac) = crate::net::lookup_mac(ip) else {
            tracing::info!(%ip, "no MAC for this client in the neighbour table");
            return Redeem::UnknownDevice;
        };
        let client = Client { mac, ip };
        let verdict = match &self.shared.codes {
            Codes::Local(store) => {
                let store = store.clone();
                let code = code.clone();
                tokio::task::spawn_blocking(move || store.check(&code, Millis::now()))
                    .await
                    .unwrap_or_else(|e| Verdict::Unreachable(e.to_string()))
            }
            Codes::Backend(backend) => backend.check(&code, Millis::now()).await,
        };
        let grant = match verdict {
            Verdict::Granted(grant) => grant,
            Verdict::Invalid => return Redeem::Invalid,
            Verdict::Expired => return Redeem::Expired,
            Verdict::UsedUp => return Redeem::UsedUp,
            Verdict::Revoked => return Redeem::Revoked,
            Verdict::NotOurs => return Redeem::NotOurs,
            Verdict::Unreachable(reason) => {
                tracing::warn!(%reason, "code check failed");
                return Redeem::BackendUnreachable;
            }
        };
        let shared = self.shared.clone();
        let store = self.store.clone();
        let accepted = tokio::task::spawn_blocking(move || {
            shared
                .lock()
                .login(client, grant, Millis::now(), store.as_ref())
        })
        .await;
        match accepted {
            Ok(Ok(())) => {
                tracing::info!(%client, "client online");
                match self.status_now(ip) {
                    Some(status) => Redeem::Online(status),
                    None => Redeem::Internal,
                }
            }
            Ok(Err(LoginError::Refused(Refusal::UsedUp))) => Redeem::UsedUp,
            Ok(Err(LoginError::Refused(Refusal::Expired))) => Redeem::Expired,
            Ok(Err(LoginError::Refused(Refusal::Revoked))) => Redeem::Revoked,
            Ok(Err(LoginError::NotSaved)) => {
                tracing::error!(%client, "login refused: it could not be saved");
                Redeem::NotSaved
            }
            Err(_) => Redeem::Internal,
        }
    }

    async fn status(&self, ip: IpAddr) -> Option<ClientStatus> {
        self.status_now(ip)
    }
}

/// How long a control client may take to send its request: the CLI and the agent send it at
/// once, so a connection idle this long is held open by something else.
const CONTROL_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Control connections served at once. At the limit a new connection closes the oldest one:
/// idle connections piling up cannot keep `status` (or the agent's usage reads) out.
const CONTROL_MAX_CONNECTIONS: usize = 64;
/// Longest pause after failed accepts in a row (out of file descriptors, EMFILE): doubling
/// from 10 ms, so a lasting failure neither spins a core nor floods the log.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one log line per this long about failing accepts; the rest are counted in it.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// Serves the control socket until `stop` turns true.
async fn serve_control(
    listener: tokio::net::UnixListener,
    shared: Arc<Shared>,
    store: Option<CodeStore>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let open: Arc<Mutex<std::collections::BTreeMap<u64, tokio::sync::oneshot::Sender<()>>>> =
        Arc::default();
    let mut next_id = 0_u64;
    let mut backoff = Duration::ZERO;
    let mut last_logged: Option<tokio::time::Instant> = None;
    let mut unlogged = 0_u64;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff = Duration::ZERO;
                stream
            }
            Err(err) => {
                unlogged += 1;
                if last_logged.is_none_or(|at| at.elapsed() >= ACCEPT_LOG_EVERY) {
                    tracing::warn!(error = %err, failures = unlogged, "control socket accept failing; backing off (too many open files? see LimitNOFILE)");
                    last_logged = Some(tokio::time::Instant::now());
                    unlogged = 0;
                }
                backoff = (backoff * 2).clamp(Duration::from_millis(10), ACCEPT_BACKOFF_MAX);
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let (evict_tx, evicted) = tokio::sync::oneshot::channel();
        let id = next_id;
        next_id += 1;
        {
            let mut open = open
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if open.len() >= CONTROL_MAX_CONNECTIONS {
                // Dropping its sender ends the oldest connection.
                open.pop_first();
            }
            open.insert(id, evict_tx);
        }
        let shared = shared.clone();
        let store = store.clone();
        let open = open.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = serve_control_connection(stream, shared, store) => {}
                _ = evicted => {}
            }
            open.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&id);
        });
    }
}

/// One request and its reply; a client silent for [`CONTROL_IDLE_TIMEOUT`] is dropped.
async fn serve_control_connection(
    stream: tokio::net::UnixStream,
    shared: Arc<Shared>,
    store: Option<CodeStore>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read.take(control::MAX_REQUEST as u64));
    let reply = match tokio::time::timeout(CONTROL_IDLE_TIMEOUT, reader.read_line(&mut line)).await
    {
        Err(_) => return,
        Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
            Ok(request) => tokio::task::spawn_blocking(move || {
                handle_control(&shared, store.as_ref(), request)
            })
            .await
            .unwrap_or_else(|e| Reply::Error(format!("internal error: {e}"))),
            Err(err) => Reply::Error(format!("bad request: {err}")),
        },
        Ok(Err(err)) => Reply::Error(format!("cannot read the request: {err}")),
    };
    let mut text = serde_json::to_string(&reply)
        .unwrap_or_else(|_| r#"{"error":"internal error"}"#.to_owned());
    text.push('\n');
    let _ = tokio::time::timeout(CONTROL_IDLE_TIMEOUT, write.write_all(text.as_bytes())).await;
}

fn handle_control(shared: &Shared, store: Option<&CodeStore>, request: Request) -> Reply {
    let now = Millis::now();
    let mut state = shared.lock();
    if matches!(request, Request::Kick { .. } | Request::RevokeCode { .. }) {
        state.settle(now, store);
    }
    match request {
        Request::Status => {
            let sessions = state.core.sessions();
            Reply::Ok(serde_json::json!({
                "lan": shared.lan,
                "portal": shared.portal_url,
                "codes": match shared.codes { Codes::Local(_) => "local", Codes::Backend(_) => "backend" },
                "uptime_seconds": shared.started.until(now).as_secs(),
                "sessions": sessions.len(),
                "online_devices": state.core.allowed().len(),
                "unattributed_bytes": state.core.unattributed_bytes(),
            }))
        }
        Request::Clients => match serde_json::to_value(state.core.sessions()) {
            Ok(value) => Reply::Ok(value),
            Err(err) => Reply::Error(format!("internal error: {err}")),
        },
        Request::Usage => match serde_json::to_value(state.live_usage()) {
            Ok(value) => Reply::Ok(value),
            Err(err) => Reply::Error(format!("internal error: {err}")),
        },
        Request::Flows => {
            let flows = Flows {
                connections: state.flows.drain().iter().map(report::connection).collect(),
            };
            match serde_json::to_value(flows) {
                Ok(value) => Reply::Ok(value),
                Err(err) => Reply::Error(format!("internal error: {err}")),
            }
        }
        Request::Kick { mac } => {
            let actions = state.core.kick(mac, now);
            let kicked = actions
                .iter()
                .filter(|a| matches!(a, Action::Revoke { .. }))
                .count();
            state.apply(actions, now, store);
            state.persist(now);
            if kicked == 0 {
                Reply::Error(format!("no online device has MAC {mac}"))
            } else {
                Reply::Ok(serde_json::json!({ "kicked": kicked }))
            }
        }
        Request::RevokeCode { code } => {
            let actions = state.core.revoke_code(&code, now);
            let cut = actions
                .iter()
                .filter(|a| matches!(a, Action::Revoke { .. }))
                .count();
            state.apply(actions, now, store);
            state.persist(now);
            Reply::Ok(serde_json::json!({ "devices_cut_off": cut }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::{Call, MemoryFirewall};

    const MB: u64 = 1_048_576;

    fn client(n: u8) -> Client {
        Client {
            mac: format!("02:00:00:00:00:{n:02x}").parse().unwrap(),
            ip: format!("10.66.0.{n}").parse().unwrap(),
        }
    }

    fn code(text: &str) -> AccessCode {
        AccessCode::parse(text).unwrap()
    }

    fn grant(text: &str, bytes: u64) -> Grant {
        Grant {
            code: code(text),
            remaining_bytes: bytes,
            expires_at: None,
        }
    }

    fn state(firewall: &MemoryFirewall, dir: &tempfile::TempDir) -> State {
        let mut firewall_box: Box<dyn Firewall> = Box::new(firewall.clone());
        firewall_box.install().unwrap();
        let file = dir.path().join("sessions.json");
        let mut state = State::restored(Policy::default(), None, firewall_box, file, Millis(0)).0;
        state.ledger = Some(ledger(dir));
        state
    }

    fn ledger(dir: &tempfile::TempDir) -> LedgerWriter {
        LedgerWriter::open(&dir.path().join("ledger"), LedgerLimits::default()).unwrap()
    }

    /// Each session's last ledger record.
    fn ledger_latest(dir: &tempfile::TempDir) -> Vec<UsageRecord> {
        let mut reader =
            edgeshare_shared::ledger::LedgerReader::open(&dir.path().join("ledger")).unwrap();
        let mut latest: HashMap<String, UsageRecord> = HashMap::new();
        for record in reader.read_after(0).unwrap() {
            latest.insert(record.session.clone(), record);
        }
        let mut records: Vec<_> = latest.into_values().collect();
        records.sort_by_key(|r| r.seq);
        records
    }

    /// The daemon starting again from `saved` at `now`, as `run` does.
    fn restart(
        fw: &MemoryFirewall,
        dir: &tempfile::TempDir,
        saved: Persisted,
        now: Millis,
    ) -> State {
        let file = dir.path().join("sessions.json");
        let (mut state, actions) = State::restored(
            Policy::default(),
            Some(saved),
            Box::new(fw.clone()),
            file,
            now,
        );
        state.ledger = Some(ledger(dir));
        state.resume(actions, now, None);
        state
    }

    fn login(state: &mut State, who: Client, text: &str, bytes: u64, now: Millis) {
        let actions = state
            .core
            .accept_code(who, grant(text, bytes), now)
            .unwrap();
        state.apply(actions, now, None);
    }

    fn used(state: &State) -> u64 {
        state.core.sessions().iter().map(|s| s.used_bytes).sum()
    }

    #[test]
    fn kernel_counters_reach_the_core_as_deltas_and_the_quota_cuts_off() {
        let fw = MemoryFirewall::new();
        let dir = tempfile::tempdir().unwrap();
        let mut state = state(&fw, &dir);
        let now = Millis(1_000);
        login(&mut state, client(2), "ABCD2345", MB, now);
        assert_eq!(fw.allowed(), vec![client(2)]);

        fw.set_counters(&client(2), 300_000, 200_000);
        state.tick(Millis(2_000), None);
        assert_eq!(used(&state), 500_000);
        fw.set_counters(&client(2), 310_000, 300_000);
        state.tick(Millis(3_000), None);
        assert_eq!(used(&state), 610_000, "only the growth is added");

        fw.set_counters(&client(2), 700_000, 400_000);
        state.tick(Millis(4_000), None);
        assert!(fw.allowed().is_empty(), "over quota: cut off");
        assert!(state.urgent, "a session change is saved at once");
    }

    #[test]
    fn a_counter_that_went_back_counts_from_zero() {
        let fw = MemoryFirewall::new();
        let dir = tempfile::tempdir().unwrap();
        let mut state = state(&fw, &dir);
        login(&mut state, client(2), "ABCD2345", 100 * MB, Millis(1_000));
        fw.set_counters(&client(2), 500, 0);
        state.tick(Millis(2_000), None);
        // The element was re-added (a repair, a re-allow): its counter restarted.
        fw.set_counters(&client(2), 100, 0);
        state.tick(Millis(3_000), None);
        assert_eq!(used(&state), 600);
    }

    #[test]
    fn the_last_bytes_are_read_before_a_kick() {
        let fw = MemoryFirewall::new();
        let dir = tempfile::tempdir().unwrap();
        let shared = Shared {
            state: Mutex::new(state(&fw, &dir)),
            codes: Codes::Local(CodeStore::new(dir.path())),
            started: Millis(0),
            lan: "lan0".into(),
            portal_url: "http://10.66.0.1:8080/".into(),
        };
        login(
            &mut shared.lock(),
            client(2),
            "ABCD2345",
            100 * MB,
            Millis::now(),
        );
        fw.set_counters(&client(2), 4_000, 1_000);
        let reply = handle_control(&shared, None, Request::Kick { mac: client(2).mac });
        assert_eq!(reply, Reply::Ok(serde_json::json!({ "kicked": 1 })));
        assert!(fw.allowed().is_empty());
        assert_eq!(
            used(&shared.lock()),
            5_000,
            "bytes before the kick are not lost"
        );

        let reply = handle_control(&shared, None, Request::Kick { mac: client(9).mac });
        assert!(
            matches!(reply, Reply::Error(ref m) if m.contains("no online device")),
            "{reply:?}"
        );

        let Reply::Ok(clients) = handle_control(&shared, None, Request::Clients) else {
            panic!("clients failed");
        };
        assert_eq!(clients[0]["used_bytes"], 5_000);
    }

    #[test]
    fn a_login_is_on_disk_before_it_is_confirmed() {
        let fw = MemoryFirewall::new();
        let dir = tempfile::tempdir().unwrap();
        let mut state = state(&fw, &dir);
        login(&mut state, client(2), "ABCD2345", MB, Millis(1_000));
        state.persist(Millis(1_000));
        let saved: Persisted =
            serde_json::from_slice(&std::fs::read(dir.path().join("sessions.json")).unwrap())
                .unwrap();
        let (core, _) = Core::restore(Policy::default(), saved.core, saved.saved_at);
        assert_eq!(core.allowed().len(), 1);

        // Usage alone waits for the interval; a session change does not.
        fw.set_counters(&client(2), 10, 0);
        state.tick(Millis(2_000), None);
        state.persist(Millis(2_000));
        assert!(state.dirty, "usage only: saved later");
        state.persist(Millis(1_000 + SAVE_EVERY.as_millis() as u64));
        assert!(!state.dirty);
    }

    /// A small tmpfs of the test's own, unmounted on drop: a disk that fills up.
    struct SmallDisk(tempfile::TempDir);

    impl SmallDisk {
        /// `None` (and "skipped") when not root; in CI (`CI=true`) it must not skip.
        fn mount() -> Option<SmallDisk> {
            if !rustix::process::geteuid().is_root() {
                assert_ne!(
                    std::env::var("CI").as_deref(),
                    Ok("true"),
                    "needs root in CI"
                );
                eprintln!("skipped: needs root (mount)");
                return None;
            }
            let dir = tempfile::tempdir().unwrap();
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "cannot mount a tmpfs on {}", dir.path().display());
            Some(SmallDisk(dir))
        }

        /// Takes every free byte.
        fn fill(&self) {
            use std::io::Write as _;
            let mut filler = std::fs::File::create(self.0.path().join("filler")).unwrap();
            while filler.write_all(&[0; 4096]).is_ok() {}
            let _ = filler.write_all(&[0; 1]);
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(self.0.path())
                .status();
        }
    }

    /// On a full disk a device already online with one code enters another: the login is
    /// refused (not saved), the kernel is left as it was, and after a `kill -9` every byte the
    /// device used goes to the code it really had; the refused one is untouched.
    #[test]
    fn a_login_that_cannot_be_saved_is_refused_and_undone() {
        let Some(disk) = SmallDisk::mount() else {
            return;
        };
        let fw = MemoryFirewall::new();
        let mut state = state(&fw, &disk.0);
        state
            .login(client(2), grant("AAAA2345", 50 * MB), Millis(1_000), None)
            .unwrap();
        fw.set_counters(&client(2), 1_000, 10_000);
        state.tick(Millis(2_000), None);
        state.save(Millis(2_000)).unwrap();

        disk.fill();
        let calls = fw.calls().len();
        let refused = state.login(client(2), grant("BBBB2345", 50 * MB), Millis(3_000), None);
        assert!(matches!(refused, Err(LoginError::NotSaved)), "{refused:?}");
        let changed: Vec<Call> = fw.calls()[calls..]
            .iter()
            .filter(|c| !matches!(c, Call::Clients | Call::IsInstalled | Call::ListQuotas))
            .cloned()
            .collect();
        assert!(changed.is_empty(), "the kernel was changed: {changed:?}");
        assert_eq!(fw.allowed(), vec![client(2)]);
        let sessions = state.core.sessions();
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions[0].code.as_str(), "AAAA2345");

        // The device goes on under its code; the daemon is killed and starts again.
        fw.set_counters(&client(2), 3_000, 40_000);
        drop(state);
        let saved: Persisted =
            serde_json::from_slice(&std::fs::read(disk.0.path().join("sessions.json")).unwrap())
                .unwrap();
        let state = restart(&fw, &disk.0, saved, Millis(4_000));
        let sessions = state.core.sessions();
        let of = |code: &str| {
            sessions
                .iter()
                .filter(|s| s.code.as_str() == code)
                .map(|s| s.used_bytes)
                .sum::<u64>()
        };
        let wrong = of("BBBB2345");
        println!(
            "login on a full disk: refused (not saved); bytes after kill -9: {} to the device's code, {wrong} to the refused one; usage lost {}",
            of("AAAA2345"),
            43_000 - of("AAAA2345")
        );
        assert_eq!(wrong, 0);
        assert_eq!(of("AAAA2345"), 43_000);
    }

    /// `sessions.json` is damaged after a code was used up and another half used (a local
    /// store, whose figure for the second lags behind). Rebuilt from the ledger, the used-up
    /// code is refused and the other delivers exactly its size over both of its sessions.
    #[test]
    fn with_sessions_json_damaged_the_ledger_rebuilds_what_was_used() {
        let fw = MemoryFirewall::new();
        let dir = tempfile::tempdir().unwrap();
        let store = CodeStore::new(dir.path());
        let made = store
            .create(50 * MB, Duration::from_secs(3600), 2, Millis(0))
            .unwrap();
        let (used_up, half) = (made[0].code.clone(), made[1].code.clone());
        let check = |code: &AccessCode, now: Millis| match store.check(code, now) {
            Verdict::Granted(grant) => grant,
            other => panic!("{other:?}"),
        };
        let mut state = state(&fw, &dir);
        state
            .login(
                client(2),
                check(&used_up, Millis(1_000)),
                Millis(1_000),
                Some(&store),
            )
            .unwrap();
        fw.set_counters(&client(2), MB, 49 * MB);
        state.tick(Millis(2_000), Some(&store));
        state
            .login(
                client(3),
                check(&half, Millis(3_000)),
                Millis(3_000),
                Some(&store),
            )
            .unwrap();
        fw.set_counters(&client(3), MB, 19 * MB);
        state.tick(Millis(4_000), Some(&store));
        state.sync_store(&store, Millis(4_000));
        fw.set_counters(&client(3), MB, 29 * MB);
        state.tick(Millis(5_000), Some(&store));
        state.save(Millis(5_000)).unwrap();
        drop(state);

        std::fs::write(dir.path().join("sessions.json"), b"{\"core\": {\"sessi").unwrap();
        let file = dir.path().join("sessions.json");
        let saved = load_state(&file).unwrap();
        assert!(saved.is_none());
        let (mut state, actions) = State::restored(
            Policy::default(),
            saved,
            Box::new(fw.clone()),
            file,
            Millis(6_000),
        );
        state.ledger = Some(ledger(&dir));
        state.rebuild_from_ledger(Millis(6_000), Some(&store));
        state.resume(actions, Millis(6_000), Some(&store));

        let again =
            state
                .core
                .accept_code(client(4), grant(used_up.as_str(), 50 * MB), Millis(7_000));
        let refused = matches!(again, Err(Refusal::UsedUp));
        // The half-used code, entered again, continues where it was: what it used before and
        // what it may use now add up to its size.
        state
            .login(
                client(5),
                check(&half, Millis(8_000)),
                Millis(8_000),
                Some(&store),
            )
            .unwrap();
        let used_before: u64 = ledger_latest(&dir)
            .iter()
            .filter(|r| r.code == half.as_str())
            .map(|r| r.total())
            .sum();
        let left = state
            .core
            .status_of(client(5).ip, Millis(8_000))
            .unwrap()
            .bytes_left;
        let allowed = used_before + left;
        println!(
            "sessions.json damaged: used-up code refused again: {refused}; a 50 MB code half used allows {:.1} MB in all ({:.1} used + {:.1} left)",
            allowed as f64 / MB as f64,
            used_before as f64 / MB as f64,
            left as f64 / MB as f64
        );
        assert!(refused, "{again:?}");
        assert_eq!(used_before, 30 * MB);
        assert_eq!(allowed, 50 * MB);
    }

    #[test]
    fn a_code_revoked_in_the_store_is_cut_off_at_the_next_sync() {
        let fw = MemoryFirewall::new();
        let dir = tempfile::tempdir().unwrap();
        let mut state = state(&fw, &dir);
        let store = CodeStore::new(dir.path());
        let made = store
            .create(MB, Duration::from_secs(3600), 2, Millis::now())
            .unwrap();
        let now = Millis::now();
        login(&mut state, client(2), made[0].code.as_str(), MB, now);
        login(&mut state, client(3), made[1].code.as_str(), MB, now);
        fw.set_counters(&client(2), 700, 0);
        // Revoked while the daemon did not hear about it.
        store.revoke(&made[0].code).unwrap();
        state.sync_store(&store, now);
        assert_eq!(fw.allowed(), vec![client(3)]);
        let codes = store.list().unwrap();
        assert_eq!(
            codes
                .iter()
                .find(|c| c.code == made[0].code)
                .unwrap()
                .used_bytes,
            700
        );
    }

    #[test]
    fn each_session_gets_a_kernel_quota_that_follows_its_devices() {
        let fw = MemoryFirewall::new();
        let dir = tempfile::tempdir().unwrap();
        let mut state = state(&fw, &dir);
        state.core = Core::new(Policy {
            devices_per_code: 2,
            ..Policy::default()
        });
        let id = quota_id(&code("ABCD2345"));
        login(&mut state, client(2), "ABCD2345", MB, Millis(1_000));
        assert_eq!(fw.quotas()[&id].limit_bytes, MB);
        assert_eq!(fw.quota_session(&client(2)), Some(id.clone()));

        // Usage alone leaves the kernel's count running.
        fw.set_counters(&client(2), 300_000, 0);
        state.tick(Millis(2_000), None);
        assert_eq!(fw.quotas()[&id].limit_bytes, MB);

        // A second device: the quota is set again for both, to what is left.
        login(&mut state, client(3), "ABCD2345", MB, Millis(3_000));
        assert_eq!(fw.quotas()[&id].limit_bytes, MB - 300_000);
        assert_eq!(fw.quota_session(&client(3)), Some(id.clone()));

        // The quota is reached: the session ends and its kernel quota goes with it, so the
        // captive devices keep their DNS and portal.
        fw.set_counters(&client(3), MB, 0);
        state.tick(Millis(4_000), None);
        assert!(fw.allowed().is_empty());
        assert!(fw.quotas().is_empty(), "{:?}", fw.quotas());
        assert_eq!(fw.quota_session(&client(2)), None);
    }

    #[test]
    fn a_session_ends_when_the_kernel_quota_is_used_up_a_packet_short() {
        let fw = MemoryFirewall::new();
        let dir = tempfile::tempdir().unwrap();
        let mut state = state(&fw, &dir);
        let id = quota_id(&code("ABCD2345"));
        login(&mut state, client(2), "ABCD2345", MB, Millis(1_000));
        let calls = || {
            fw.calls()
                .iter()
                .filter(|c| **c == Call::ListQuotas)
                .count()
        };

        // Far from the quota the kernel is not asked.
        fw.set_counters(&client(2), 100_000, 400_000);
        state.tick(Millis(2_000), None);
        assert_eq!(calls(), 0);
        let session = &state.core.sessions()[0];
        assert_eq!((session.used_bytes, session.up_bytes), (500_000, 100_000));

        // Less than a packet left, the kernel's quota not used up: asked, nothing ends.
        fw.set_counters(&client(2), 100_000, MB - 100_000 - 1_000);
        state.tick(Millis(3_000), None);
        assert_eq!(calls(), 1);
        assert_eq!(fw.allowed(), vec![client(2)]);

        // The kernel dropped the packet that would have passed the quota: the session ends
        // with the bytes forwarded before it, and the bytes forwarded since the last reading
        // are read before the cut.
        fw.set_counters(&client(2), 100_000, MB - 100_000 - 200);
        assert!(fw.use_quota(&id, MB));
        state.tick(Millis(4_000), None);
        assert!(fw.allowed().is_empty());
        assert!(state.core.sessions().is_empty());
        assert_eq!(
            state.core.status_of(client(2).ip, Millis(4_000)),
            None,
            "ended for good"
        );
    }

    #[test]
    fn a_kicked_devices_quota_is_cleared_and_ids_hide_the_code() {
        let fw = MemoryFirewall::new();
        let dir = tempfile::tempdir().unwrap();
        let mut state = state(&fw, &dir);
        login(&mut state, client(2), "ABCD2345", MB, Millis(1_000));
        let actions = state.core.kick(client(2).mac, Millis(2_000));
        state.apply(actions, Millis(2_000), None);
        assert!(fw.quotas().is_empty());
        let id = quota_id(&code("ABCD2345"));
        assert_eq!(id.len(), 16);
        assert!(!id.contains("ABCD"));
        assert_eq!(id, quota_id(&code("abcd-2345")), "stable across restarts");
    }

    #[test]
    fn reconcile_removes_strangers_and_restores_the_sessions_clients() {
        let fw = MemoryFirewall::new();
        let dir = tempfile::tempdir().unwrap();
        let mut state = state(&fw, &dir);
        login(&mut state, client(2), "ABCD2345", MB, Millis(1_000));
        // A client left in the kernel by an older run, and ours deleted by hand.
        state
            .firewall
            .allow(&client(7), Duration::from_secs(60))
            .unwrap();
        state.firewall.revoke(&client(2)).unwrap();
        state.reconcile(Millis(2_000));
        assert_eq!(fw.allowed(), vec![client(2)]);
    }

    #[test]
    fn a_flushed_table_is_repaired_with_its_clients() {
        let fw = MemoryFirewall::new();
        let dir = tempfile::tempdir().unwrap();
        let mut state = state(&fw, &dir);
        login(&mut state, client(2), "ABCD2345", MB, Millis(1_000));
        fw.flush_ruleset();
        assert!(fw.allowed().is_empty());
        state.repair(Millis(2_000));
        assert!(fw.installed());
        assert_eq!(fw.allowed(), vec![client(2)]);
    }

    #[test]
    fn the_ledger_is_exact_across_a_crash_between_its_write_and_the_state_save() {
        let fw = MemoryFirewall::new();
        let dir = tempfile::tempdir().unwrap();
        let mut state = state(&fw, &dir);
        login(&mut state, client(2), "ABCD2345", 10_000, Millis(1_000));
        fw.set_counters(&client(2), 300, 2_000);
        state.tick(Millis(2_000), None);
        state.save(Millis(2_000)).unwrap();
        let saved = serde_json::to_vec(&state.persisted(Millis(2_000))).unwrap();
        // More traffic; the ledger is written, then the daemon dies before sessions.json.
        fw.set_counters(&client(2), 400, 3_000);
        state.tick(Millis(3_000), None);
        let live = state.live_ledger_updates();
        state.write_ledger(live);
        let id = session_id(&code("ABCD2345"), Millis(1_000));
        let last = ledger_latest(&dir);
        assert_eq!(
            (last[0].session.as_str(), last[0].up, last[0].down),
            (id.as_str(), 400, 3_000)
        );
        drop(state);
        // The kernel counts on while the daemon is down.
        fw.set_counters(&client(2), 500, 4_000);
        let saved: Persisted = serde_json::from_slice(&saved).unwrap();
        let mut restarted = restart(&fw, &dir, saved, Millis(5_000));
        assert_eq!(
            used(&restarted),
            4_500,
            "the kernel's count, not ledger plus delta"
        );
        // The session reaches its quota: the ledger's last record is final and exact.
        fw.set_counters(&client(2), 600, 9_400);
        restarted.tick(Millis(6_000), None);
        let last = ledger_latest(&dir);
        assert_eq!(last.len(), 1);
        assert_eq!((last[0].up, last[0].down), (600, 9_400));
        assert_eq!(last[0].ended.as_deref(), Some("quota used"));
        assert!(!last[0].code.is_empty());
    }

    #[test]
    fn after_a_reboot_the_ledger_keeps_what_the_lost_counters_held() {
        let fw = MemoryFirewall::new();
        let dir = tempfile::tempdir().unwrap();
        let mut state = state(&fw, &dir);
        login(&mut state, client(2), "ABCD2345", 100 * MB, Millis(1_000));
        fw.set_counters(&client(2), 300, 2_000);
        state.tick(Millis(2_000), None);
        state.save(Millis(2_000)).unwrap();
        let saved = serde_json::to_vec(&state.persisted(Millis(2_000))).unwrap();
        fw.set_counters(&client(2), 700, 9_000);
        state.tick(Millis(3_000), None);
        let live = state.live_ledger_updates();
        state.write_ledger(live);
        drop(state);
        // A reboot: the kernel's table and its counters are gone.
        let rebooted = MemoryFirewall::new();
        let mut boxed: Box<dyn Firewall> = Box::new(rebooted.clone());
        boxed.install().unwrap();
        let saved: Persisted = serde_json::from_slice(&saved).unwrap();
        let restarted = restart(&rebooted, &dir, saved, Millis(60_000));
        assert_eq!(used(&restarted), 9_700, "raised to the ledger's totals");
        assert_eq!(rebooted.allowed(), vec![client(2)], "back online");
    }

    #[test]
    fn saved_state_is_exact_after_a_crash() {
        let fw = MemoryFirewall::new();
        let dir = tempfile::tempdir().unwrap();
        let mut state = state(&fw, &dir);
        login(&mut state, client(2), "ABCD2345", 100 * MB, Millis(1_000));
        fw.set_counters(&client(2), 300, 200);
        state.tick(Millis(2_000), None);
        let saved = serde_json::to_vec(&state.persisted(Millis(2_000))).unwrap();
        // The daemon dies; the kernel keeps counting the client's traffic.
        drop(state);
        fw.set_counters(&client(2), 900, 600);
        let saved: Persisted = serde_json::from_slice(&saved).unwrap();
        let mut restarted = restart(&fw, &dir, saved, Millis(5_000));
        assert_eq!(
            used(&restarted),
            1_500,
            "every byte the kernel counted, once"
        );
        assert_eq!(fw.allowed(), vec![client(2)], "still online");
        fw.set_counters(&client(2), 1_000, 600);
        restarted.tick(Millis(6_000), None);
        assert_eq!(used(&restarted), 1_600, "and counting goes on from there");
    }

    #[test]
    fn bytes_used_before_an_expiry_during_downtime_still_count() {
        let fw = MemoryFirewall::new();
        let dir = tempfile::tempdir().unwrap();
        let mut state = state(&fw, &dir);
        let g = Grant {
            code: code("ABCD2345"),
            remaining_bytes: 100 * MB,
            expires_at: Some(Millis(10_000)),
        };
        let actions = state.core.accept_code(client(2), g, Millis(1_000)).unwrap();
        state.apply(actions, Millis(1_000), None);
        let saved = state.persisted(Millis(2_000));
        drop(state);
        // While the daemon is down the client uses 7 kB, then the code expires.
        fw.set_counters(&client(2), 5_000, 2_000);
        let restarted = restart(&fw, &dir, saved, Millis(20_000));
        assert!(fw.allowed().is_empty(), "expired: cut off");
        assert_eq!(
            restarted.core.unattributed_bytes(),
            0,
            "the 7 kB went to the session"
        );
    }

    #[test]
    fn the_lan_address_is_read_from_ip_json() {
        let json = br#"[{"ifindex":2,"ifname":"veth0","addr_info":[{"family":"inet","local":"10.66.0.1","prefixlen":24}]}]"#;
        assert_eq!(parse_ipv4(json), Some(Ipv4Addr::new(10, 66, 0, 1)));
        assert_eq!(parse_ipv4(br#"[{"ifindex":2,"addr_info":[]}]"#), None);
        assert_eq!(parse_ipv4(b"[]"), None);
        assert_eq!(parse_ipv4(b"garbage"), None);
    }
}
