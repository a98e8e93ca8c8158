//! Reports the gateway's usage ledger to the codes backend (contract 1), exactly once.
//!
//! The logic is the pure state machine in [`core`](self::core); this is its shell: it reads
//! the ledger from the persisted cursor, reads `remainingMB` and `expireAt` (`GET
//! /api/provider/codes`; for another account's code, authorize-code's `remainingMB`) and the
//! account's `bytesShared` (`GET /api/auth/me`) before reports and after lost replies,
//! persists the cursor **before** each report goes out
//! (so a crash mid-report is settled by reading back, never by sending again blindly), sends
//! the reports (one per code at a time, and at most one per account in flight: see
//! [`queue`](self::queue)) and feeds their outcomes back. A
//! report names the consumer whose sessions it carries (`consumerId`) when the ledger says
//! one signed in on the portal for them.
//!
//! Every `reconcile_interval` it also compares the account's `points` and `bytesShared` with
//! what the backend's own usage log says they grew by (see [`reconcile`](self::reconcile)):
//! credit lost to reports crediting the account at once, from any of its gateways, is shown
//! with its size (metrics, `status`).
//!
//! It does not write the ledger (the gateway does) and does not start itself: the agent's
//! `run` spawns [`run_reporter`].

mod core;
mod queue;
mod reconcile;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgeshare_shared::backend::crowd::{CrowdClient, ProviderCode, UsageReport};
use edgeshare_shared::backend::{BackendError, Rejection};
use edgeshare_shared::code::{AccessCode, redact};
use edgeshare_shared::ledger::{LedgerError, LedgerReader};
use edgeshare_shared::retry::Backoff;

pub use self::core::{
    CodeInfo, Cursor, Expiry, InFlight, Notice, Outcome, Owner, Policy, Reporter, Send,
    SessionState, Totals,
};
use self::queue::Queue;
pub use self::reconcile::Shortfall;
use self::reconcile::{Account, Entry, Reconciler};
use crate::config::AgentConfig;
use crate::metrics::{Metrics, unix_now};

/// The cursor's file name in the agent's state directory.
pub const CURSOR_FILE: &str = "usage-cursor.json";

/// What the reporter needs to run.
#[derive(Debug, Clone, PartialEq)]
pub struct ReporterSettings {
    /// The gateway's ledger directory.
    pub ledger: PathBuf,
    /// Where the cursor is kept (replaced atomically).
    pub cursor_file: PathBuf,
    /// A code's report waits for this many bytes (whole MiB), unless it is the code's last.
    pub min_report_bytes: u64,
    /// How often the ledger is read (every second near a code's expiry).
    pub interval: Duration,
    /// A code's last report goes once its sessions ended this close to its expiry.
    pub flush_ahead: Duration,
    /// A code's remainder (under a MiB) is reported this long after its sessions ended.
    pub fraction_hold: Duration,
    /// How long after a lost reply `remainingMB` is read back: a request that is still on
    /// its way must have been applied by then. The HTTP timeout is a fair value.
    pub settle: Duration,
    /// Delays between rounds that failed.
    pub backoff: Backoff,
    /// How often the account's credit is compared with its usage log.
    pub reconcile_interval: Duration,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ReporterSettings {
    fn policy(&self) -> Policy {
        Policy {
            min_report_bytes: self.min_report_bytes,
            settle_ms: millis(self.settle),
            flush_ahead_ms: millis(self.flush_ahead),
            fraction_hold_ms: millis(self.fraction_hold),
        }
    }

    /// The settings from the agent's config; `None` without a `[backend]`.
    pub fn from_config(config: &AgentConfig) -> Option<Self> {
        config.backend.as_ref()?;
        let usage = config.usage.clone().unwrap_or_default();
        Some(ReporterSettings {
            ledger: usage.ledger,
            cursor_file: config.state.dir.join(CURSOR_FILE),
            min_report_bytes: usage.min_report_bytes,
            interval: usage.interval,
            flush_ahead: usage.flush_ahead,
            fraction_hold: usage.fraction_hold,
            settle: config.http.timeout,
            backoff: Backoff::default(),
            reconcile_interval: usage.reconcile_interval,
        })
    }
}

/// Why the reporter cannot run at all.
#[derive(Debug, thiserror::Error)]
pub enum ReporterError {
    #[error("cannot read the usage cursor {}: {source}", path.display())]
    ReadCursor {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the usage cursor {} is damaged ({source}); it records which usage was already reported: restore it from a backup, or move it away to report the whole ledger again (which may bill some usage twice)",
        path.display()
    )]
    BadCursor {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The cursor saved at `path`, or an empty one if there is none yet.
pub fn load_cursor(path: &Path) -> Result<Cursor, ReporterError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| ReporterError::BadCursor {
            path: path.to_owned(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Cursor::default()),
        Err(source) => Err(ReporterError::ReadCursor {
            path: path.to_owned(),
            source,
        }),
    }
}

fn save_cursor(path: &Path, cursor: &Cursor) -> std::io::Result<()> {
    let json = serde_json::to_vec(cursor)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // It names access codes, which are secrets: owner only.
    edgeshare_shared::secret::write_private(path, &json)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The shell's state between rounds.
struct Shell<'a> {
    settings: &'a ReporterSettings,
    client: &'a CrowdClient,
    metrics: &'a Metrics,
    reporter: Reporter,
    reader: Option<LedgerReader>,
    /// A missing ledger is reported once, not every round.
    warned_missing: bool,
    reconciler: Reconciler,
}

impl Shell<'_> {
    fn now(&self) -> u64 {
        unix_ms()
    }

    fn log_notices(&mut self) {
        for notice in self.reporter.take_notices() {
            let message = notice.describe();
            match notice {
                Notice::Resolved { .. } => tracing::info!("{message}"),
                Notice::Unbilled { bytes, .. } => {
                    tracing::warn!(unbilled_bytes = bytes, "{message}")
                }
                Notice::Unclear { .. } => tracing::warn!("{message}"),
                Notice::CodeGone { bytes, .. } | Notice::Parked { bytes, .. } => {
                    tracing::error!(bytes, "{message}");
                    self.metrics.set_last_error(&message);
                }
                Notice::HalfApplied { uncredited, .. } => {
                    tracing::error!(uncredited_bytes = uncredited, "{message}");
                    self.metrics.set_last_error(&message);
                }
            }
        }
    }

    /// A round that could not report: logged, and shown by `status` as the last error.
    fn failed(&self, what: &str, err: &dyn std::fmt::Display) {
        tracing::warn!(error = %err, "{what}; usage reports wait");
        self.metrics
            .set_last_error(&format!("usage reporter: {what}: {err}"));
    }

    /// What the backend says now of every code in use: the provider's own from its list,
    /// another account's through authorize-code (a code it refuses is left out: gone).
    async fn read_codes(&self) -> Result<HashMap<String, CodeInfo>, ()> {
        let own = self.client.list_codes().await.map_err(|e| {
            self.failed("cannot read the provider's code list", &e);
        })?;
        let mut codes: HashMap<String, CodeInfo> = own
            .iter()
            .map(|c| (c.code.as_str().to_owned(), own_code_info(c)))
            .collect();
        for code in self.reporter.codes_in_use() {
            if codes.contains_key(&code) {
                continue;
            }
            let Ok(parsed) = AccessCode::parse(&code) else {
                continue;
            };
            match self.client.authorize_code(&parsed).await {
                Ok(authorized) => {
                    codes.insert(
                        code,
                        CodeInfo {
                            remaining_mb: authorized.remaining_mb,
                            expiry: Expiry::Unknown,
                            owner: Owner::Other,
                        },
                    );
                }
                Err(e)
                    if matches!(
                        e.rejection(),
                        Some(Rejection::NotFound | Rejection::CodeExpired)
                    ) => {}
                Err(e) => {
                    self.failed("cannot read what another account's code has left", &e);
                    return Err(());
                }
            }
        }
        Ok(codes)
    }

    /// The account's `bytesShared`, to tell a report applied only half; `None` if it cannot
    /// be read (the check is then skipped, nothing else waits for it).
    async fn bytes_shared(&self) -> Option<f64> {
        match self.client.me().await {
            Ok(me) => match me.bytes_shared {
                serde_json::Value::Number(n) => n.as_f64(),
                // A string is the backend's known corruption (a report once sent `bytes` as
                // text): there is nothing to compare with.
                _ => None,
            },
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the account's bytesShared; half-applied reports cannot be told this round");
                None
            }
        }
    }

    fn save(&self) -> bool {
        match save_cursor(&self.settings.cursor_file, self.reporter.cursor()) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(
                    file = %self.settings.cursor_file.display(),
                    error = %e,
                    "cannot save the usage cursor; no report is sent until it can be (check the state directory's space and permissions)"
                );
                self.metrics.set_last_error(&format!(
                    "usage reporter: cannot save its cursor {}: {e}",
                    self.settings.cursor_file.display()
                ));
                false
            }
        }
    }

    /// Opens the ledger if needed and takes in what is new. False if that failed.
    fn read_ledger(&mut self) -> bool {
        if self.reader.is_none() {
            match LedgerReader::open(&self.settings.ledger) {
                Ok(mut reader) => {
                    self.warned_missing = false;
                    // After a power cut the ledger may have lost a tail this cursor read.
                    match reader.last_seq() {
                        Ok(last) if last < self.reporter.cursor().read_seq => {
                            tracing::warn!(
                                ledger = %self.settings.ledger.display(),
                                ledger_seq = last,
                                cursor_seq = self.reporter.cursor().read_seq,
                                "the ledger ends before what was read from it (a power cut?); reading it again from the start (nothing is reported twice)"
                            );
                            self.reporter.rewind();
                        }
                        Ok(_) => {}
                        Err(e) => {
                            self.failed("cannot read the usage ledger", &e);
                            return false;
                        }
                    }
                    self.reader = Some(reader);
                }
                Err(LedgerError::Missing { path }) => {
                    if !self.warned_missing {
                        tracing::warn!(
                            ledger = %path.display(),
                            "no usage ledger yet; waiting for the gateway to write one (check [usage] ledger if the gateway runs)"
                        );
                        self.warned_missing = true;
                    }
                    return true;
                }
                Err(e) => {
                    self.failed("cannot open the usage ledger", &e);
                    return false;
                }
            }
        }
        let Some(reader) = self.reader.as_mut() else {
            return true;
        };
        match reader.read_since(self.reporter.cursor().read_seq) {
            Ok(read) => {
                // The sequence went back (an SD card lost a write, and numbers were handed
                // out again): the reader gives the whole ledger, which is taken in from the
                // start; totals are cumulative, so nothing is reported twice.
                if read.went_back.is_some() {
                    self.reporter.rewind();
                }
                self.reporter.ingest(&read.records);
                true
            }
            Err(e) => {
                self.failed("cannot read the usage ledger", &e);
                false
            }
        }
    }

    /// One round: read the ledger, and if there is work, read what the codes have left,
    /// send the reports and settle them. False if something failed and the round should be
    /// retried after a backoff.
    async fn round(&mut self) -> bool {
        let mut ok = self.read_ledger();
        self.reporter.forget_old(unix_ms());
        if !self.reporter.wants_remaining(self.now()) {
            return ok;
        }
        let Ok(codes) = self.read_codes().await else {
            return false;
        };
        let shared = self.bytes_shared().await;
        let sends = self.reporter.plan(self.now(), &codes, shared);
        self.log_notices();
        // Written down before anything is sent: a crash from here on is settled by reading
        // back, never by sending again.
        if !self.save() {
            for send in &sends {
                self.reporter
                    .on_outcome(&send.code, Outcome::NotApplied, self.now());
            }
            return false;
        }
        if sends.is_empty() {
            return ok;
        }
        // The backend credits accounts by read-modify-write: reports that credit one account
        // go one after another, those of different accounts side by side.
        let client = self.client;
        let mut queue = Queue::new(sends);
        let mut flying = futures_util::stream::FuturesUnordered::new();
        loop {
            for send in queue.start() {
                flying.push(async move {
                    let outcome = report(client, &send).await;
                    (send, outcome)
                });
            }
            let Some((send, outcome)) = futures_util::StreamExt::next(&mut flying).await else {
                break;
            };
            queue.done(&send.code);
            if outcome == Outcome::NotApplied {
                ok = false;
            }
            if outcome == Outcome::Applied {
                tracing::debug!(code = %redact(&send.code), bytes = send.bytes, "usage reported");
            }
            self.reporter.on_outcome(&send.code, outcome, self.now());
        }
        debug_assert!(queue.is_empty());
        self.log_notices();
        // If this fails, the cursor on disk still holds the reports in flight, and a restart
        // reads them back: nothing is lost or doubled.
        ok &= self.save();
        ok
    }

    /// The account's points and bytesShared, `None` if they cannot be read.
    async fn account(&self) -> Option<Account> {
        match self.client.me().await {
            Ok(me) => Some(Account {
                points: me.points,
                bytes_shared: me.bytes_shared.as_f64(),
            }),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the account; its credit is compared with its usage log next time");
                None
            }
        }
    }

    /// The usage log's latest page, `None` if it cannot be read.
    async fn log_page(&self) -> Option<Vec<Entry>> {
        match self.client.usage().await {
            Ok(usage) => Some(usage.logs.iter().filter_map(Entry::from_json).collect()),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the usage log; the account's credit is compared with it next time");
                None
            }
        }
    }

    /// Compares the account's credit with its usage log: the baseline first (the account,
    /// then the log), then readings (the log, then the account); see
    /// [`reconcile`](self::reconcile) for why in that order.
    async fn reconcile(&mut self) {
        if self.reconciler.has_baseline() {
            let Some(page) = self.log_page().await else {
                return;
            };
            let Some(account) = self.account().await else {
                return;
            };
            let before = self.reconciler.shortfall();
            self.reconciler.observe(&page, account);
            let now = self.reconciler.shortfall();
            store_shortfall(self.metrics, now);
            if let Some(s) = now.filter(|s| Some(*s) != before && (s.points > 0 || s.bytes > 0)) {
                tracing::error!(
                    shortfall_points = s.points,
                    shortfall_bytes = s.bytes,
                    entries_missed = s.entries_missed,
                    "the account has {} points and {} bytes of bytesShared less than its usage log earned since the agent started{}: credit lost to reports crediting it at once (from its other gateways, or another agent of this account); the edge cannot repair this: ask the backend's operator to credit it",
                    s.points,
                    s.bytes,
                    if s.entries_missed {
                        " (at least: log entries may have been missed)"
                    } else {
                        ""
                    }
                );
            }
        } else {
            let Some(account) = self.account().await else {
                return;
            };
            let Some(page) = self.log_page().await else {
                return;
            };
            self.reconciler.baseline(account, &page);
        }
    }
}

fn own_code_info(code: &ProviderCode) -> CodeInfo {
    CodeInfo {
        remaining_mb: code.remaining_mb,
        expiry: code.expire_at_ms().map_or(Expiry::Never, Expiry::At),
        owner: Owner::This,
    }
}

/// Sends one report and says how it ended.
async fn report(client: &CrowdClient, send: &Send) -> Outcome {
    let Ok(code) = AccessCode::parse(&send.code) else {
        return Outcome::Refused {
            kind: Rejection::NotFound,
            message: "the ledger holds a malformed access code".to_owned(),
        };
    };
    let request = UsageReport {
        code,
        bytes: send.bytes,
        consumer_id: send.consumer.clone(),
    };
    match client.report_usage(&request).await {
        Ok(_) => Outcome::Applied,
        Err(err) => {
            tracing::warn!(code = %redact(&send.code), bytes = send.bytes, error = %err, "usage report failed");
            outcome_of(err)
        }
    }
}

fn outcome_of(err: BackendError) -> Outcome {
    match err {
        // A success status with a body not in the contract's shape was most likely applied;
        // reading back decides.
        BackendError::NoReply { .. } | BackendError::BadReply { .. } => Outcome::Unknown,
        // The backend applies a report in two saves: a 5xx may come after the first, so
        // only reading back can tell.
        BackendError::Rejected {
            kind: Rejection::ServerError,
            ..
        } => Outcome::Unknown,
        err if err.is_transient() => Outcome::NotApplied,
        BackendError::Rejected { kind, message, .. } => Outcome::Refused { kind, message },
        BackendError::Setup(_)
        | BackendError::Unreachable { .. }
        | BackendError::BodyTooLarge { .. } => Outcome::NotApplied,
    }
}

/// Reports the ledger until `shutdown` completes. Returns an error only when it cannot run at
/// all (a damaged cursor); everything else (no ledger yet, backend down) is logged and retried.
pub async fn run_reporter(
    settings: &ReporterSettings,
    client: &CrowdClient,
    metrics: &Metrics,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ReporterError> {
    let cursor = load_cursor(&settings.cursor_file)?;
    metrics.usage_configured.store(true, Ordering::Relaxed);
    let mut shell = Shell {
        settings,
        client,
        metrics,
        reporter: Reporter::new(cursor, settings.policy(), unix_ms()),
        reader: None,
        warned_missing: false,
        reconciler: Reconciler::default(),
    };
    tracing::info!(
        ledger = %settings.ledger.display(),
        cursor = %settings.cursor_file.display(),
        pending_bytes = shell.reporter.pending_total(),
        "usage reporter started"
    );
    let mut shutdown = std::pin::pin!(shutdown);
    let mut delays = settings.backoff.delays();
    let mut reconcile_at = tokio::time::Instant::now();
    loop {
        let ok = tokio::select! {
            ok = shell.round() => ok,
            () = &mut shutdown => return Ok(()),
        };
        // Between rounds, so that none of this agent's reports is in flight meanwhile.
        if tokio::time::Instant::now() >= reconcile_at {
            tokio::select! {
                () = shell.reconcile() => {}
                () = &mut shutdown => return Ok(()),
            }
            reconcile_at = tokio::time::Instant::now() + settings.reconcile_interval;
        }
        store_usage(
            metrics,
            shell.reporter.totals(),
            shell.reporter.pending_total(),
            ok,
        );
        let wait = if ok {
            delays = settings.backoff.delays();
            let now = shell.now();
            let to_wake = shell
                .reporter
                .next_wake_ms(now)
                .map_or(settings.interval, |at| {
                    Duration::from_millis(at.saturating_sub(now))
                });
            settings.interval.min(to_wake)
        } else {
            delays.next().unwrap_or(settings.backoff.max)
        }
        .min(reconcile_at.saturating_duration_since(tokio::time::Instant::now()));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = &mut shutdown => return Ok(()),
        }
    }
}

// The reporter writes its figures into the metrics here, not through `Metrics` methods, so
// that `metrics` (a leaf every task uses) does not depend on the reporter's types.

/// The usage reporter's figures after a round (`ok`: the round succeeded).
pub fn store_usage(metrics: &Metrics, totals: Totals, pending: u64, ok: bool) {
    metrics
        .usage_reported_bytes
        .store(totals.reported_bytes, Ordering::Relaxed);
    metrics
        .usage_pending_bytes
        .store(pending, Ordering::Relaxed);
    metrics
        .usage_written_off_bytes
        .store(totals.written_off_bytes, Ordering::Relaxed);
    metrics
        .usage_half_applied
        .store(totals.half_applied, Ordering::Relaxed);
    metrics
        .usage_uncredited_bytes
        .store(totals.uncredited_bytes, Ordering::Relaxed);
    if ok {
        metrics.usage_failing_since.store(0, Ordering::Relaxed);
    } else {
        let _ = metrics.usage_failing_since.compare_exchange(
            0,
            unix_now(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

/// The account's credit against its usage log; `None` until there are two readings.
pub fn store_shortfall(metrics: &Metrics, shortfall: Option<Shortfall>) {
    let Some(s) = shortfall else {
        return;
    };
    metrics
        .usage_credit_shortfall_points
        .store(s.points, Ordering::Relaxed);
    metrics
        .usage_credit_shortfall_bytes
        .store(s.bytes, Ordering::Relaxed);
    metrics
        .usage_credit_entries_missed
        .store(s.entries_missed, Ordering::Relaxed);
    metrics
        .usage_credit_reconciled
        .store(true, Ordering::Relaxed);
}
