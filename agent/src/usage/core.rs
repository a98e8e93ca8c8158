//! The usage reporter's logic, with no I/O: ledger records in, reports out, outcomes in.
//!
//! The backend's report-usage has no idempotency and loses updates under concurrency
//! (contract 1), so exactly-once rests on three rules kept here:
//! - at most one report per code is unsettled at any time, and it is written down (the
//!   [`Cursor`] is persisted by the shell) **before** it is sent, with the code's
//!   `remainingMB` read just before;
//! - a report whose fate is unknown (no reply, an agent crash) is settled by reading
//!   `remainingMB` again and comparing, never by sending it again blindly;
//! - a report never asks for more than the code has left, so it is never refused for that
//!   (the rest is written off and logged: the backend cannot bill it).
//!
//! Bytes are per session in the ledger and per code at the backend: a code's report carries
//! the unreported bytes of all its sessions, at least `min_report_bytes` (a report under
//! 1 MiB earns the provider nothing) unless one of them has ended.
//!
//! Time is passed in (milliseconds of a clock the shell chooses) and no call here sleeps.

use std::collections::{BTreeMap, HashMap};

use edgeshare_shared::backend::Rejection;
use edgeshare_shared::backend::crowd::MB;
use edgeshare_shared::code::redact;
use edgeshare_shared::ledger::UsageRecord;
use serde::{Deserialize, Serialize};

/// How far apart two `remainingMB` readings may be and still count as equal: half a byte.
const SAME_MB: f64 = 0.5 / MB;

/// Ended, fully settled sessions are forgotten this long after their last record: twice the
/// ledger's default retention, so that reading the ledger again from its start (after it lost
/// its tail in a power cut) never finds a session the cursor has forgotten.
pub const FORGET_AFTER_MS: u64 = 2 * 30 * 24 * 3600 * 1000;

/// Whole bytes left on a code with `remaining_mb`. The backend's 0.01 MB of slack is not
/// used, so that a code is never billed past what it was sold with. A millionth of a byte is
/// added before rounding down because JSON parsers may read a number one unit in the last
/// place low: 1674389 bytes left must not become 1674388.
fn room_bytes(remaining_mb: f64) -> u64 {
    // f64 → u64 saturates and maps NaN to 0, the safe answer.
    (remaining_mb.max(0.0) * MB + 1e-6).floor() as u64
}

/// What the reporter has learnt and promised; persisted by the shell after every change that
/// matters (see [`Reporter::cursor`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cursor {
    /// The ledger has been read up to this sequence number.
    pub read_seq: u64,
    pub sessions: BTreeMap<String, SessionState>,
    /// Per code, the report written down before it was sent; its outcome is not yet known.
    pub in_flight: BTreeMap<String, InFlight>,
}

/// One session as the reporter knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionState {
    pub code: String,
    /// The highest total (up + down) the ledger has shown.
    pub seen: u64,
    /// Bytes confirmed reported, or written off (the code had nothing left, or the backend
    /// no longer knows it).
    pub settled: u64,
    pub ended: bool,
    pub last_at_ms: u64,
}

impl SessionState {
    fn pending(&self) -> u64 {
        self.seen.saturating_sub(self.settled)
    }
}

/// A report that was (or was about to be) sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InFlight {
    /// The `bytes` of the report.
    pub bytes: u64,
    /// The code's `remainingMB` read just before it was sent.
    pub before_mb: f64,
    /// What each session settles once it is applied; their sum may exceed `bytes` by what
    /// the code had no room for.
    pub parts: BTreeMap<String, u64>,
}

/// A report to send now. The shell persists [`Reporter::cursor`] first, then sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    pub code: String,
    pub bytes: u64,
}

/// How a report-usage call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// 200: applied.
    Applied,
    /// No reply, a reply not in the contract's shape, or the agent does not know (it
    /// restarted): it may or may not have been applied.
    Unknown,
    /// Certainly not applied, and it may work later (unreachable, 5xx, 429).
    NotApplied,
    /// Refused by the backend (4xx), with its own text.
    Refused { kind: Rejection, message: String },
}

/// Something the shell should log; the core only says what and how much.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// Bytes the backend could not bill: the code had nothing (more) left.
    Unbilled { code: String, bytes: u64 },
    /// The backend no longer knows the code (expired or deleted), or it is not this
    /// account's: its bytes cannot be reported.
    CodeGone { code: String, bytes: u64 },
    /// The backend refused a report in a way retrying will not fix; the bytes stay pending
    /// until the agent restarts.
    Parked {
        code: String,
        bytes: u64,
        message: String,
    },
    /// `remainingMB` changed, but not by the report: someone else reports on this code.
    Unclear {
        code: String,
        bytes: u64,
        before_mb: f64,
        after_mb: f64,
        applied: bool,
    },
    /// A report whose outcome was unknown turned out to be applied (or not).
    Resolved {
        code: String,
        bytes: u64,
        applied: bool,
    },
}

/// Where a code stands, beyond what the cursor holds.
#[derive(Debug, Clone, PartialEq)]
enum Status {
    /// Sent; waiting for its outcome.
    Sending,
    /// Outcome unknown; to be read back after `at_ms` (the settle time, so that a request
    /// still travelling is applied before the reading).
    Verify { at_ms: u64 },
    /// Refused for good; not retried until the agent restarts.
    Parked,
}

/// The reporter's state machine.
#[derive(Debug)]
pub struct Reporter {
    cursor: Cursor,
    min_report_bytes: u64,
    settle_ms: u64,
    status: HashMap<String, Status>,
    /// Refusals for "not enough remaining" in a row, per code: a second one parks it.
    short_refusals: HashMap<String, u32>,
    notices: Vec<Notice>,
    /// Bytes the backend took in reports settled as applied, since this reporter started.
    reported_bytes: u64,
}

impl Reporter {
    /// Resumes from a persisted cursor at `now_ms`. Reports it holds as in flight were sent
    /// by a previous run (or were about to be): their outcome is unknown.
    pub fn new(cursor: Cursor, min_report_bytes: u64, settle_ms: u64, now_ms: u64) -> Self {
        let status = cursor
            .in_flight
            .keys()
            .map(|code| {
                let at_ms = now_ms.saturating_add(settle_ms);
                (code.clone(), Status::Verify { at_ms })
            })
            .collect();
        Reporter {
            cursor,
            min_report_bytes: min_report_bytes.max(1),
            settle_ms,
            status,
            short_refusals: HashMap::new(),
            notices: Vec::new(),
            reported_bytes: 0,
        }
    }

    /// Bytes the backend took in reports known to be applied, since this reporter started
    /// (a report read back as applied counts when the read-back says so).
    pub fn reported_bytes(&self) -> u64 {
        self.reported_bytes
    }

    /// The state to persist.
    pub fn cursor(&self) -> &Cursor {
        &self.cursor
    }

    /// What happened that the shell should log, since the last call.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// Takes in ledger records (in any order, repeats included: totals are cumulative, so a
    /// record read twice changes nothing).
    pub fn ingest(&mut self, records: &[UsageRecord]) {
        for record in records {
            self.cursor.read_seq = self.cursor.read_seq.max(record.seq);
            let total = record.total();
            let session = self
                .cursor
                .sessions
                .entry(record.session.clone())
                .or_insert_with(|| SessionState {
                    code: record.code.clone(),
                    seen: 0,
                    settled: 0,
                    ended: false,
                    last_at_ms: 0,
                });
            session.seen = session.seen.max(total);
            session.ended |= record.ended.is_some();
            session.last_at_ms = session.last_at_ms.max(record.at_ms);
        }
    }

    /// Reads the ledger again from its start: it lost records this cursor had read.
    pub fn rewind(&mut self) {
        self.cursor.read_seq = 0;
    }

    /// Bytes not yet settled for `code`.
    pub fn pending(&self, code: &str) -> u64 {
        self.sessions_of(code).map(|(_, s)| s.pending()).sum()
    }

    /// Bytes not yet settled, over all codes.
    pub fn pending_total(&self) -> u64 {
        self.cursor
            .sessions
            .values()
            .map(SessionState::pending)
            .sum()
    }

    fn sessions_of<'a>(
        &'a self,
        code: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a SessionState)> {
        self.cursor
            .sessions
            .iter()
            .filter(move |(_, s)| s.code == code)
    }

    fn is_due(&self, code: &str) -> bool {
        let pending = self.pending(code);
        pending > 0
            && (pending >= self.min_report_bytes
                || self
                    .sessions_of(code)
                    .any(|(_, s)| s.ended && s.pending() > 0))
    }

    /// Codes with a report to make now (nothing unsettled in flight, not parked).
    fn due_codes(&self) -> Vec<String> {
        let mut codes: Vec<&String> = self.cursor.sessions.values().map(|s| &s.code).collect();
        codes.sort_unstable();
        codes.dedup();
        codes
            .into_iter()
            .filter(|c| !self.status.contains_key(*c) && self.is_due(c))
            .cloned()
            .collect()
    }

    /// True if a `plan` at `now_ms` has work: a report to make or one to read back. The shell
    /// then reads every code's `remainingMB` and calls [`Reporter::plan`].
    pub fn wants_remaining(&self, now_ms: u64) -> bool {
        self.status
            .values()
            .any(|s| matches!(s, Status::Verify { at_ms } if *at_ms <= now_ms))
            || !self.due_codes().is_empty()
    }

    /// When a report read back later is next due, if any.
    pub fn next_verify_ms(&self) -> Option<u64> {
        self.status
            .values()
            .filter_map(|s| match s {
                Status::Verify { at_ms } => Some(*at_ms),
                _ => None,
            })
            .min()
    }

    /// Given every code's `remainingMB` read just now (codes missing are unknown to the
    /// backend or not this account's), settles the reports read back and returns the reports
    /// to send. The cursor then holds them in flight: persist it before sending.
    pub fn plan(&mut self, now_ms: u64, remaining_mb: &HashMap<String, f64>) -> Vec<Send> {
        let verify: Vec<String> = self
            .status
            .iter()
            .filter(|(_, s)| matches!(s, Status::Verify { at_ms } if *at_ms <= now_ms))
            .map(|(c, _)| c.clone())
            .collect();
        for code in verify {
            self.read_back(&code, remaining_mb.get(&code).copied());
        }
        let mut sends = Vec::new();
        for code in self.due_codes() {
            let pending = self.pending(&code);
            let Some(&before_mb) = remaining_mb.get(&code) else {
                self.write_off(&code);
                self.notices.push(Notice::CodeGone {
                    code,
                    bytes: pending,
                });
                continue;
            };
            let room = room_bytes(before_mb);
            if room == 0 {
                self.write_off(&code);
                self.notices.push(Notice::Unbilled {
                    code,
                    bytes: pending,
                });
                continue;
            }
            let parts: BTreeMap<String, u64> = self
                .sessions_of(&code)
                .filter(|(_, s)| s.pending() > 0)
                .map(|(id, s)| (id.clone(), s.pending()))
                .collect();
            let bytes = pending.min(room);
            self.cursor.in_flight.insert(
                code.clone(),
                InFlight {
                    bytes,
                    before_mb,
                    parts,
                },
            );
            self.status.insert(code.clone(), Status::Sending);
            sends.push(Send { code, bytes });
        }
        sends
    }

    /// The outcome of a [`Send`] for `code`.
    pub fn on_outcome(&mut self, code: &str, outcome: Outcome, now_ms: u64) {
        let Some(flight) = self.cursor.in_flight.get(code) else {
            return;
        };
        let bytes = flight.bytes;
        match outcome {
            Outcome::Applied => {
                self.short_refusals.remove(code);
                self.settle(code);
            }
            Outcome::Unknown => {
                let at_ms = now_ms.saturating_add(self.settle_ms);
                self.status
                    .insert(code.to_owned(), Status::Verify { at_ms });
            }
            Outcome::NotApplied => self.unsend(code),
            Outcome::Refused { kind, message } => match kind {
                // What was left changed since it was read (someone else reports on this
                // code): read it again, once.
                Rejection::NotEnoughRemaining => {
                    let refusals = self.short_refusals.entry(code.to_owned()).or_default();
                    *refusals += 1;
                    if *refusals >= 2 {
                        self.park(code, bytes, message);
                    } else {
                        self.unsend(code);
                    }
                }
                Rejection::NotFound | Rejection::CodeExpired => self.code_gone(code),
                _ => self.park(code, bytes, message),
            },
        }
    }

    /// Settles a report whose outcome was unknown, from the code's `remainingMB` now.
    fn read_back(&mut self, code: &str, after_mb: Option<f64>) {
        let Some(flight) = self.cursor.in_flight.get(code) else {
            self.status.remove(code);
            return;
        };
        let bytes = flight.bytes;
        let Some(after_mb) = after_mb else {
            // The code is gone: whether or not the report was applied, nothing more can be
            // billed to it.
            self.code_gone(code);
            return;
        };
        let before_mb = flight.before_mb;
        let expected_mb = (before_mb - bytes as f64 / MB).max(0.0);
        let applied = if (after_mb - expected_mb).abs() <= SAME_MB {
            true
        } else if (after_mb - before_mb).abs() <= SAME_MB {
            false
        } else {
            // Neither: another reporter moved it. The nearer reading wins.
            let applied = (after_mb - expected_mb).abs() < (after_mb - before_mb).abs();
            self.notices.push(Notice::Unclear {
                code: code.to_owned(),
                bytes,
                before_mb,
                after_mb,
                applied,
            });
            applied
        };
        self.notices.push(Notice::Resolved {
            code: code.to_owned(),
            bytes,
            applied,
        });
        if applied {
            self.settle(code);
        } else {
            self.unsend(code);
        }
    }

    /// The report for `code` was applied: its sessions settle their parts.
    fn settle(&mut self, code: &str) {
        self.status.remove(code);
        let Some(flight) = self.cursor.in_flight.remove(code) else {
            return;
        };
        self.reported_bytes = self.reported_bytes.saturating_add(flight.bytes);
        let mut credited = 0u64;
        for (id, part) in &flight.parts {
            if let Some(session) = self.cursor.sessions.get_mut(id) {
                session.settled = session.settled.saturating_add(*part).min(session.seen);
                credited = credited.saturating_add(*part);
            }
        }
        if credited > flight.bytes {
            self.notices.push(Notice::Unbilled {
                code: code.to_owned(),
                bytes: credited - flight.bytes,
            });
        }
    }

    /// The report for `code` was not applied: its bytes are pending again.
    fn unsend(&mut self, code: &str) {
        self.status.remove(code);
        self.cursor.in_flight.remove(code);
    }

    fn park(&mut self, code: &str, bytes: u64, message: String) {
        self.cursor.in_flight.remove(code);
        self.status.insert(code.to_owned(), Status::Parked);
        self.notices.push(Notice::Parked {
            code: code.to_owned(),
            bytes,
            message,
        });
    }

    /// The backend no longer knows `code`: its report in flight and its pending bytes are
    /// written off, and the shell says how many.
    fn code_gone(&mut self, code: &str) {
        let pending = self.pending(code);
        self.cursor.in_flight.remove(code);
        self.status.remove(code);
        self.write_off(code);
        self.notices.push(Notice::CodeGone {
            code: code.to_owned(),
            bytes: pending,
        });
    }

    /// Settles every session of `code` without a report.
    fn write_off(&mut self, code: &str) {
        for session in self.cursor.sessions.values_mut() {
            if session.code == code {
                session.settled = session.seen;
            }
        }
    }

    /// Forgets ended, settled sessions whose last record is older than [`FORGET_AFTER_MS`].
    pub fn forget_old(&mut self, now_unix_ms: u64) {
        let in_flight = &self.cursor.in_flight;
        self.cursor.sessions.retain(|id, s| {
            let old = s.last_at_ms.saturating_add(FORGET_AFTER_MS) < now_unix_ms;
            let busy = in_flight.values().any(|f| f.parts.contains_key(id));
            !(s.ended && s.pending() == 0 && old) || busy
        });
    }
}

impl Notice {
    /// A log line's message and the code (redacted), for the shell.
    pub fn describe(&self) -> String {
        match self {
            Notice::Unbilled { code, bytes } => format!(
                "code {} has nothing left: {bytes} bytes used on it cannot be billed (the gateway's kernel quota lets a session run up to 64 KiB past its code)",
                redact(code)
            ),
            Notice::CodeGone { code, bytes } => format!(
                "the backend does not know code {} (expired and deleted, or made by another account): {bytes} bytes cannot be reported; the agent's [backend] account must be the one that makes the gateway's codes",
                redact(code)
            ),
            Notice::Parked {
                code,
                bytes,
                message,
            } => format!(
                "the backend refused a usage report of {bytes} bytes for code {}: {message}; not retried until the agent restarts (check the [backend] account and its role, then restart edgeshare-agent; the bytes stay pending in its cursor)",
                redact(code)
            ),
            Notice::Unclear {
                code,
                bytes,
                before_mb,
                after_mb,
                applied,
            } => format!(
                "code {}: remainingMB went from {before_mb} to {after_mb} around a report of {bytes} bytes whose reply was lost; someone else reports on this code; taken as {}",
                redact(code),
                if *applied { "applied" } else { "not applied" }
            ),
            Notice::Resolved {
                code,
                bytes,
                applied,
            } => format!(
                "a usage report of {bytes} bytes for code {} whose reply was lost was {}",
                redact(code),
                if *applied {
                    "applied"
                } else {
                    "not applied; sending it again"
                }
            ),
        }
    }

    /// True for what an operator should look at (warnings and errors), false for routine.
    pub fn is_problem(&self) -> bool {
        !matches!(self, Notice::Resolved { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;
    const CODE: &str = "ABCD2345";
    const OTHER: &str = "EFGH2345";
    const SETTLE: u64 = 1000;

    fn rec(seq: u64, session: &str, total: u64, ended: bool) -> UsageRecord {
        UsageRecord {
            seq,
            at_ms: seq * 1000,
            session: session.to_owned(),
            code: session[..8].to_owned(),
            up: total / 3,
            down: total - total / 3,
            ended: ended.then(|| "expired".to_owned()),
        }
    }

    fn reporter() -> Reporter {
        Reporter::new(Cursor::default(), MIB, SETTLE, 0)
    }

    fn left(codes: &[(&str, f64)]) -> HashMap<String, f64> {
        codes.iter().map(|(c, mb)| ((*c).to_owned(), *mb)).collect()
    }

    #[test]
    fn waits_for_a_mebibyte_then_reports_the_whole_delta() {
        let mut r = reporter();
        r.ingest(&[rec(1, "ABCD2345-1", MIB - 1, false)]);
        assert!(!r.wants_remaining(0), "under 1 MiB and not ended: wait");
        r.ingest(&[rec(2, "ABCD2345-1", MIB + 10, false)]);
        assert!(r.wants_remaining(0));
        let sends = r.plan(0, &left(&[(CODE, 500.0)]));
        assert_eq!(
            sends,
            [Send {
                code: CODE.into(),
                bytes: MIB + 10
            }]
        );
        assert_eq!(r.cursor().in_flight[CODE].before_mb, 500.0);
        // One report per code at a time: more usage waits for the outcome.
        r.ingest(&[rec(3, "ABCD2345-1", 3 * MIB, false)]);
        assert!(!r.wants_remaining(0));
        r.on_outcome(CODE, Outcome::Applied, 0);
        assert!(r.cursor().in_flight.is_empty());
        assert_eq!(r.pending(CODE), 3 * MIB - (MIB + 10));
        assert_eq!(r.cursor().read_seq, 3);
    }

    #[test]
    fn an_ended_session_is_reported_at_once_with_its_codes_other_sessions() {
        let mut r = reporter();
        r.ingest(&[
            rec(1, "ABCD2345-1", 100, false),
            rec(2, "ABCD2345-2", 200, false),
            rec(3, "EFGH2345-1", 300, false),
        ]);
        assert!(!r.wants_remaining(0));
        r.ingest(&[rec(4, "ABCD2345-1", 150, true)]);
        let sends = r.plan(0, &left(&[(CODE, 1.0), (OTHER, 1.0)]));
        assert_eq!(
            sends,
            [Send {
                code: CODE.into(),
                bytes: 350
            }]
        );
        r.on_outcome(CODE, Outcome::Applied, 0);
        assert_eq!(r.pending(CODE), 0);
        assert_eq!(r.pending(OTHER), 300);
    }

    #[test]
    fn the_last_report_is_clamped_to_what_the_code_has_left() {
        let mut r = reporter();
        r.ingest(&[rec(1, "ABCD2345-1", 5 * MIB, true)]);
        // 1.5 MiB left: exactly 1_572_864 bytes.
        let sends = r.plan(0, &left(&[(CODE, 1.5)]));
        assert_eq!(sends[0].bytes, 1_572_864);
        assert!(
            r.take_notices().is_empty(),
            "nothing written off before it is applied"
        );
        r.on_outcome(CODE, Outcome::Applied, 0);
        assert_eq!(r.pending(CODE), 0);
        assert_eq!(
            r.take_notices(),
            [Notice::Unbilled {
                code: CODE.into(),
                bytes: 5 * MIB - 1_572_864
            }]
        );
        // Later usage on the spent code is written off without a report.
        r.ingest(&[rec(2, "ABCD2345-2", 2 * MIB, true)]);
        assert!(r.plan(0, &left(&[(CODE, 0.0)])).is_empty());
        assert_eq!(r.pending(CODE), 0);
        assert!(
            matches!(r.take_notices()[..], [Notice::Unbilled { bytes, .. }] if bytes == 2 * MIB)
        );
        // Less than a byte left counts as nothing.
        r.ingest(&[rec(3, "ABCD2345-3", 10, true)]);
        assert!(r.plan(0, &left(&[(CODE, 0.5 / MB)])).is_empty());
    }

    #[test]
    fn room_is_whole_bytes_and_survives_a_reading_one_ulp_low() {
        let exact = 1_674_389.0 / MB;
        let low = f64::from_bits(exact.to_bits() - 1);
        assert_eq!(room_bytes(exact), 1_674_389);
        assert_eq!(room_bytes(low), 1_674_389);
        assert_eq!(room_bytes(5.3), 5_557_452);
        assert_eq!(room_bytes(-0.004), 0);
        assert_eq!(room_bytes(f64::NAN), 0);
    }

    #[test]
    fn a_lost_reply_is_read_back_after_the_settle_time() {
        for (after, applied) in [(500.0 - 2.0, true), (500.0, false)] {
            let mut r = reporter();
            r.ingest(&[rec(1, "ABCD2345-1", 2 * MIB, true)]);
            let sends = r.plan(0, &left(&[(CODE, 500.0)]));
            assert_eq!(sends.len(), 1);
            r.on_outcome(CODE, Outcome::Unknown, 100);
            assert_eq!(r.next_verify_ms(), Some(100 + SETTLE));
            assert!(
                !r.wants_remaining(100 + SETTLE - 1),
                "not before the settle time"
            );
            assert!(r.wants_remaining(100 + SETTLE));
            let again = r.plan(100 + SETTLE, &left(&[(CODE, after)]));
            assert_eq!(
                r.take_notices(),
                [Notice::Resolved {
                    code: CODE.into(),
                    bytes: 2 * MIB,
                    applied
                }]
            );
            if applied {
                assert!(again.is_empty());
                assert_eq!(r.pending(CODE), 0);
            } else {
                // Not applied: sent again at once, with the fresh reading.
                assert_eq!(again[0].bytes, 2 * MIB);
                assert_eq!(r.cursor().in_flight[CODE].before_mb, 500.0);
            }
        }
    }

    #[test]
    fn a_restart_reads_back_the_reports_that_were_in_flight() {
        let mut r = reporter();
        r.ingest(&[rec(1, "ABCD2345-1", 3 * MIB, false)]);
        r.plan(0, &left(&[(CODE, 10.0)]));
        // The process dies here; the cursor was saved with the report in flight.
        let saved: Cursor =
            serde_json::from_str(&serde_json::to_string(r.cursor()).unwrap()).unwrap();
        assert_eq!(&saved, r.cursor());
        let mut r = Reporter::new(saved, MIB, SETTLE, 5000);
        assert!(!r.wants_remaining(5000));
        assert!(r.wants_remaining(5000 + SETTLE));
        // Applied before the crash: settled, not sent again.
        assert!(r.plan(5000 + SETTLE, &left(&[(CODE, 7.0)])).is_empty());
        assert_eq!(r.pending(CODE), 0);
        // Records read again after the restart change nothing.
        r.ingest(&[rec(1, "ABCD2345-1", 3 * MIB, false)]);
        assert_eq!(r.pending(CODE), 0);
    }

    #[test]
    fn reading_the_ledger_again_reports_nothing_twice() {
        let mut r = reporter();
        let records = [
            rec(1, "ABCD2345-1", 2 * MIB, false),
            rec(2, "ABCD2345-1", 4 * MIB, true),
        ];
        r.ingest(&records);
        r.plan(0, &left(&[(CODE, 10.0)]));
        r.on_outcome(CODE, Outcome::Applied, 0);
        r.rewind();
        assert_eq!(r.cursor().read_seq, 0);
        r.ingest(&records);
        assert!(!r.wants_remaining(0));
        assert_eq!(r.cursor().read_seq, 2);
    }

    #[test]
    fn refusals_are_not_retried_in_a_loop() {
        // Not enough remaining: read again once, then parked.
        let mut r = reporter();
        r.ingest(&[rec(1, "ABCD2345-1", 2 * MIB, true)]);
        let refused = || Outcome::Refused {
            kind: Rejection::NotEnoughRemaining,
            message: "Not enough remaining MB".into(),
        };
        r.plan(0, &left(&[(CODE, 10.0)]));
        r.on_outcome(CODE, refused(), 0);
        assert!(r.wants_remaining(0));
        r.plan(0, &left(&[(CODE, 10.0)]));
        r.on_outcome(CODE, refused(), 0);
        assert!(!r.wants_remaining(0), "parked");
        assert_eq!(r.pending(CODE), 2 * MIB, "the bytes stay pending");
        let notices = r.take_notices();
        assert!(
            matches!(&notices[..], [Notice::Parked { message, .. }] if message == "Not enough remaining MB")
        );
        assert!(
            notices[0].describe().contains("restart"),
            "{}",
            notices[0].describe()
        );
        assert!(!notices[0].describe().contains(CODE), "codes are secrets");

        // An expired or deleted code: written off, with an error.
        let mut r = reporter();
        r.ingest(&[rec(1, "ABCD2345-1", 2 * MIB, true)]);
        r.plan(0, &left(&[(CODE, 10.0)]));
        r.on_outcome(
            CODE,
            Outcome::Refused {
                kind: Rejection::CodeExpired,
                message: "Code expired".into(),
            },
            0,
        );
        assert_eq!(r.pending(CODE), 0);
        assert!(
            matches!(r.take_notices()[..], [Notice::CodeGone { bytes, .. }] if bytes == 2 * MIB)
        );

        // Transient: pending again, sent again next round.
        let mut r = reporter();
        r.ingest(&[rec(1, "ABCD2345-1", 2 * MIB, true)]);
        r.plan(0, &left(&[(CODE, 10.0)]));
        r.on_outcome(CODE, Outcome::NotApplied, 0);
        assert_eq!(r.plan(0, &left(&[(CODE, 10.0)])).len(), 1);
    }

    #[test]
    fn a_code_the_backend_does_not_list_is_written_off_with_an_error() {
        let mut r = reporter();
        r.ingest(&[rec(1, "ABCD2345-1", 2 * MIB, false)]);
        assert!(r.plan(0, &left(&[(OTHER, 10.0)])).is_empty());
        assert_eq!(r.pending(CODE), 0);
        assert!(matches!(r.take_notices()[..], [Notice::CodeGone { .. }]));
    }

    #[test]
    fn old_finished_sessions_are_forgotten_but_not_busy_ones() {
        let mut r = reporter();
        r.ingest(&[
            rec(1, "ABCD2345-1", 10, true),
            rec(2, "EFGH2345-1", 10, false),
        ]);
        r.plan(0, &left(&[(CODE, 10.0)]));
        r.forget_old(FORGET_AFTER_MS * 2);
        assert_eq!(r.cursor().sessions.len(), 2, "in flight: kept");
        r.on_outcome(CODE, Outcome::Applied, 0);
        r.forget_old(FORGET_AFTER_MS + 1000);
        assert_eq!(r.cursor().sessions.len(), 2, "not old enough yet");
        r.forget_old(FORGET_AFTER_MS * 2);
        assert_eq!(
            r.cursor().sessions.keys().collect::<Vec<_>>(),
            ["EFGH2345-1"],
            "live sessions stay"
        );
    }

    /// A pure model of report-usage: remaining in bytes, a report applied or not as the
    /// schedule says, the reply lost or not.
    #[derive(Debug, Clone, Copy)]
    enum Fate {
        Ok,
        Fail500,
        AppliedNoReply,
        LostNoReply,
        Crash,
    }

    fn fate() -> impl Strategy<Value = Fate> {
        prop_oneof![
            4 => Just(Fate::Ok),
            1 => Just(Fate::Fail500),
            1 => Just(Fate::AppliedNoReply),
            1 => Just(Fate::LostNoReply),
            1 => Just(Fate::Crash),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// Whatever fails and whenever the agent restarts, once the failures stop each code's
        /// billed bytes equal its sessions' totals clamped to what it was sold with.
        #[test]
        fn billed_equals_used_clamped_to_the_quota(
            sessions in prop::collection::vec((0usize..3, prop::collection::vec(0u64..3 * MIB, 1..5)), 1..8),
            quotas in prop::collection::vec(1u64..12 * MIB, 3),
            fates in prop::collection::vec(fate(), 0..30),
        ) {
            let codes = ["AAAA2345", "BBBB2345", "CCCC2345"];
            let mut remaining: Vec<u64> = quotas.clone();
            let mut used = [0u64; 3];
            // The ledger: each session's growing totals, the last record ending it.
            let mut ledger = Vec::new();
            let mut seq = 0;
            for (i, (code, steps)) in sessions.iter().enumerate() {
                let mut total = 0;
                for (j, step) in steps.iter().enumerate() {
                    total += step;
                    seq += 1;
                    ledger.push(UsageRecord {
                        seq,
                        at_ms: seq,
                        session: format!("{}-{i}", codes[*code]),
                        code: codes[*code].to_owned(),
                        up: total,
                        down: 0,
                        ended: (j + 1 == steps.len()).then(|| "quota".to_owned()),
                    });
                }
                used[*code] += total;
            }
            let mut r = reporter();
            let mut fates = fates.into_iter();
            let mut now = 0;
            let mut fed = 0;
            for _round in 0..400 {
                now += SETTLE;
                // The ledger grows over time.
                fed = (fed + 2).min(ledger.len());
                r.ingest(&ledger[..fed]);
                if !r.wants_remaining(now) {
                    if fed == ledger.len() && r.next_verify_ms().is_none() {
                        break;
                    }
                    continue;
                }
                let list: HashMap<String, f64> = codes
                    .iter()
                    .zip(&remaining)
                    .map(|(c, left)| ((*c).to_owned(), *left as f64 / MB))
                    .collect();
                for send in r.plan(now, &list) {
                    let i = codes.iter().position(|c| *c == send.code).unwrap();
                    prop_assert!(send.bytes <= remaining[i], "never asks for more than is left");
                    let fate = fates.next().unwrap_or(Fate::Ok);
                    if matches!(fate, Fate::Ok | Fate::AppliedNoReply | Fate::Crash) {
                        remaining[i] -= send.bytes;
                    }
                    match fate {
                        Fate::Ok => r.on_outcome(&send.code, Outcome::Applied, now),
                        Fate::Fail500 => r.on_outcome(&send.code, Outcome::NotApplied, now),
                        Fate::AppliedNoReply | Fate::LostNoReply => {
                            r.on_outcome(&send.code, Outcome::Unknown, now);
                        }
                        Fate::Crash => {
                            let saved = r.cursor().clone();
                            r = Reporter::new(saved, MIB, SETTLE, now);
                        }
                    }
                }
            }
            prop_assert_eq!(r.pending_total(), 0);
            for i in 0..3 {
                prop_assert_eq!(quotas[i] - remaining[i], used[i].min(quotas[i]), "code {}", codes[i]);
            }
        }
    }
}
