//! Persistence: `sessions.json` (the core and the kernel counter baselines, saved
//! together), the usage ledger the agent reports from, the local code store's usage
//! figures, and the rebuild from the ledger and the kernel when `sessions.json` is lost.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use edgeshare_shared::code::{AccessCode, redact};
use edgeshare_shared::ledger::{LedgerWriter, UsageRecord, UsageUpdate};
use serde::{Deserialize, Serialize};

use super::state::State;
use super::{quota_id, session_id, session_start};
use crate::codes::CodeStore;
use crate::core::{Action, Core, EndReason, Recorded, Snapshot, Usage};
use crate::counters;
use crate::net::{Client, Millis};

/// Longest time between two saves of the session state while only usage changes. Usage
/// needs no prompt save: after a crash the kernel's counters minus the saved baselines give
/// exactly what was used since (see [`Persisted`]). Sessions starting or ending are saved at
/// once, before the consumer or operator is answered.
pub(super) const SAVE_EVERY: Duration = Duration::from_secs(5);

/// What is saved to `sessions.json`. The core's usage figures and the kernel counter
/// baselines are saved together, so after a crash the bytes the kernel counted since the
/// save are still the difference between its counters and these baselines: none is lost
/// and none is counted twice.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Persisted {
    pub(super) core: Snapshot,
    pub(super) baselines: Vec<(Client, Usage)>,
    /// When this was saved: the core is restored as of then, so that the bytes counted
    /// while the daemon was down are recorded before sessions that expired meanwhile end.
    pub(super) saved_at: Millis,
}

/// What is written to disk and when: `sessions.json` and the usage ledger, with the
/// ledger's final records that could not be written yet.
pub(super) struct Books {
    /// Where the state is saved (`sessions.json`).
    file: PathBuf,
    /// Something worth saving changed since the last save.
    dirty: bool,
    /// A session started or ended since the last save: save now, not at the next interval.
    urgent: bool,
    last_saved: Millis,
    /// The usage ledger the agent reports from (`None` in tests that do not look at it).
    ledger: Option<LedgerWriter>,
    /// Final records of ended sessions not yet in the ledger.
    pending: Vec<UsageUpdate>,
}

impl Books {
    pub(super) fn new(file: PathBuf, now: Millis) -> Self {
        Books {
            file,
            dirty: true,
            urgent: false,
            last_saved: now,
            ledger: None,
            pending: Vec::new(),
        }
    }

    pub(super) fn with_ledger(&mut self, ledger: LedgerWriter) {
        self.ledger = Some(ledger);
    }

    /// The file of the state directory named `name` (beside `sessions.json`).
    pub(super) fn beside(&self, name: &str) -> PathBuf {
        self.file.with_file_name(name)
    }

    /// Usage changed: saved within [`SAVE_EVERY`].
    pub(super) fn usage_changed(&mut self) {
        self.dirty = true;
    }

    /// A session started, ended or changed devices: saved at once.
    pub(super) fn sessions_changed(&mut self) {
        self.dirty = true;
        self.urgent = true;
    }

    #[cfg(test)]
    pub(super) fn is_dirty(&self) -> bool {
        self.dirty
    }

    #[cfg(test)]
    pub(super) fn is_urgent(&self) -> bool {
        self.urgent
    }

    fn due(&self, now: Millis) -> bool {
        self.urgent || (self.dirty && self.last_saved.until(now) >= SAVE_EVERY)
    }

    /// A session's final record, written with the next ledger write.
    pub(super) fn ended(&mut self, update: UsageUpdate) {
        self.pending.push(update);
        self.sessions_changed();
    }

    /// Writes the final records waiting, if any.
    pub(super) fn write_finals(&mut self) {
        if !self.pending.is_empty() {
            self.write_ledger(Vec::new());
        }
    }

    /// Appends the final records waiting and `live`, as one batch (one fsync). On failure (a
    /// full disk, say) the final records wait for the next try; live totals need no retry,
    /// the next save carries them (they are cumulative).
    pub(super) fn write_ledger(&mut self, live: Vec<UsageUpdate>) {
        let Some(ledger) = &mut self.ledger else {
            return;
        };
        let mut batch = std::mem::take(&mut self.pending);
        let finals = batch.len();
        batch.extend(live);
        if let Err(err) = ledger.append(&batch) {
            tracing::error!(error = %err, "cannot write the usage ledger; retrying at the next save");
            batch.truncate(finals);
            self.pending = batch;
        }
    }

    /// Writes the ledger (`live`: every live session's totals), then `persisted` (temp file,
    /// fsync, rename). The ledger first: should the daemon die between the two writes, the
    /// restored core is raised to the ledger's totals, never added to them. A failure is
    /// logged here; only a login needs to act on it (see [`State::logins`]).
    fn save(
        &mut self,
        live: Vec<UsageUpdate>,
        persisted: &Persisted,
        now: Millis,
    ) -> std::io::Result<()> {
        self.write_ledger(live);
        let result = serde_json::to_vec(persisted)
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

    /// Each session's latest ledger record.
    fn latest_records(&self) -> Vec<&UsageRecord> {
        self.ledger
            .as_ref()
            .map(|ledger| ledger.sessions().collect())
            .unwrap_or_default()
    }

    /// A session's latest ledger record.
    fn latest(&self, session: &str) -> Option<&UsageRecord> {
        self.ledger.as_ref()?.latest(session)
    }

    /// Every session's figures the books hold, as `(session, code, bytes)`: the ledger's
    /// latest records, then the final records not yet written.
    pub(super) fn recorded(&self) -> impl Iterator<Item = (&str, &str, u64)> {
        self.latest_records()
            .into_iter()
            .map(|r| (r.session.as_str(), r.code.as_str(), r.total()))
            .chain(self.pending.iter().map(|u| {
                (
                    u.session.as_str(),
                    u.code.as_str(),
                    u.up.saturating_add(u.down),
                )
            }))
    }
}

impl State {
    /// Writes the state to disk now (see [`Books::save`]).
    pub(super) fn save(&mut self, now: Millis) -> std::io::Result<()> {
        let live = self.live_ledger_updates();
        let persisted = self.persisted(now);
        self.books.save(live, &persisted, now)
    }

    /// Saves at once if a session started or ended (callers answer only after this, so what
    /// they confirm survives a crash), else if usage changed and the last save is old.
    pub(super) fn persist(&mut self, now: Millis) {
        if self.books.due(now) {
            // Logged by `save`; the next persist tries again.
            let _ = self.save(now);
        }
    }

    /// Writes live sessions' usage to the local code store, and cuts off codes revoked there
    /// (a `codes revoke` while the daemon was down, or one it did not hear about).
    pub(super) fn sync_store(&mut self, store: &CodeStore, now: Millis) {
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
    pub(super) fn rebuild_from_ledger(&mut self, now: Millis, store: Option<&CodeStore>) {
        let mut latest = self.books.latest_records();
        if latest.is_empty() {
            // A first start: nothing to rebuild.
            return;
        }
        latest.sort_by_key(|r| r.seq);
        let recorded: Vec<Recorded> = latest
            .into_iter()
            .filter_map(|r| {
                Some(Recorded {
                    code: AccessCode::parse(&r.code).ok()?,
                    started_at: session_start(&r.session)?,
                    at: Millis(r.at_ms),
                    usage: Usage {
                        up: r.up,
                        down: r.down,
                    },
                    ended: r.ended.as_deref().and_then(EndReason::parse),
                    consumer: r.consumer.clone(),
                })
            })
            .collect();
        self.core = Core::rebuild(*self.core.policy(), &recorded, now);
        let raised = self.raise_to_kernel_quotas(now);
        self.apply(raised, now, store);
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
        self.books.sessions_changed();
    }

    /// Without saved state, what devices used after the ledger's last record (while the
    /// daemon was down, say) is known only to the kernel: each session's quota object holds
    /// the session's total (it starts at what the session had used, see
    /// [`Firewall::set_quota`]). Rebuilt sessions are raised to it, and one whose quota is
    /// used up ends as used up. The clients' own counters hold the same bytes again: they
    /// become the baselines, so that nothing is counted twice.
    pub(super) fn raise_to_kernel_quotas(&mut self, now: Millis) -> Vec<Action> {
        match self.firewall.clients() {
            Ok(counters) => {
                self.kernel.adopt(&counters::reading(&counters), now);
            }
            Err(err) => tracing::error!(error = %err, "cannot read the kernel counters"),
        }
        let quotas = match self.firewall.list_quotas() {
            Ok(quotas) => quotas,
            Err(err) => {
                tracing::error!(error = %err, "cannot read the session quotas: what devices used since the ledger's last record is lost");
                return Vec::new();
            }
        };
        let mut actions = Vec::new();
        let mut known = HashSet::new();
        for session in self.core.sessions() {
            let id = quota_id(&session.code);
            let Some(quota) = quotas.get(&id) else {
                continue;
            };
            known.insert(id);
            if quota.used_bytes > session.used_bytes {
                tracing::info!(
                    session = %session_id(&session.code, session.started_at),
                    ledger_bytes = session.used_bytes,
                    kernel_bytes = quota.used_bytes,
                    "the kernel counted more than the ledger holds; continuing from the kernel's count"
                );
                // The quota counts both directions together: what it adds is booked as
                // download, which is most of what devices use.
                let at_least = Usage::of_total(quota.used_bytes, session.up_bytes);
                actions.extend(self.core.raise_usage(
                    &session.code,
                    session.started_at,
                    at_least,
                    now,
                ));
            }
            if quota.used_bytes >= quota.limit_bytes {
                actions.extend(self.core.quota_reached(&session.code, now));
            }
        }
        for (id, quota) in quotas.iter().filter(|(id, _)| !known.contains(*id)) {
            tracing::error!(
                quota = %id,
                used_bytes = quota.used_bytes,
                "a session quota in the kernel belongs to no session the ledger recorded (a session younger than the ledger's last write): its bytes cannot be billed"
            );
        }
        actions
    }

    /// Raises each live session to its last ledger record where that is higher (see
    /// [`Core::raise_usage`]).
    pub(super) fn raise_to_ledger(&mut self, now: Millis) -> Vec<Action> {
        let mut actions = Vec::new();
        for session in self.core.sessions() {
            let id = session_id(&session.code, session.started_at);
            let Some(record) = self.books.latest(&id) else {
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
    pub(super) fn live_ledger_updates(&self) -> Vec<UsageUpdate> {
        self.core
            .sessions()
            .into_iter()
            .filter(|s| s.used_bytes > 0)
            .map(|s| {
                let usage = Usage::of_total(s.used_bytes, s.up_bytes);
                UsageUpdate {
                    session: session_id(&s.code, s.started_at),
                    code: s.code.as_str().to_owned(),
                    up: usage.up,
                    down: usage.down,
                    ended: None,
                    consumer: s.consumer,
                }
            })
            .collect()
    }

    pub(super) fn persisted(&self, now: Millis) -> Persisted {
        Persisted {
            core: self.core.snapshot(),
            baselines: self.kernel.counters().to_saved(),
            saved_at: now,
        }
    }
}

pub(super) fn load_state(path: &PathBuf) -> anyhow::Result<Option<Persisted>> {
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
