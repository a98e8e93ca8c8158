//! The account's credit against the backend's own usage log: what every gateway of the
//! account lost to the backend's per-account read-modify-write, whichever reported it.
//!
//! The backend writes a usage log entry for every report on a code, naming the code's owner,
//! and credits the owner `floor(bytes / MiB)` points and, from 1 MiB up, `bytes` to its
//! `bytesShared`, by reading the owner's record, adding and saving it (contract 1). Two
//! reports crediting the account at once can so lose one's credit, though both are logged.
//! This agent sends one report per account at a time, but another gateway of the same
//! account cannot be stopped: so from a baseline (the account's `points` and `bytesShared`,
//! and the log entries already there), every entry logged since must have grown them by its
//! credit, and what they fell short by was lost.
//!
//! `GET /api/provider/usage` lists only the latest [`LOG_PAGE`] entries, newest first: the
//! shell reads it often enough that each page overlaps the one before. When a full page has
//! nothing in common with the one before, entries may have been missed (their credit is not
//! expected, so the shortfall may be larger than shown): that is said, not hidden.
//!
//! Readings race reports in flight. The baseline reads the account first and the log after,
//! so an entry whose credit is not in the baseline yet is never expected (at worst a loss is
//! missed, never invented). Later, the log is read first and the account after, so a credit
//! may be seen before its entry: too little expected, for one reading. The real service
//! writes an entry a moment before its credit, so a reading may also expect a credit still
//! on its way: the shortfall shown is the smaller of the last two readings (a loss is for
//! good, a reading's error passes).
//!
//! A report the backend applied only half (no entry, no credit) is not seen here: the
//! reporter finds those of this agent from `bytesShared` (see [`core`](super::core)).

use std::collections::HashSet;

use serde_json::Value;

use super::core::MIB;

/// Entries `GET /api/provider/usage` lists (the latest).
pub const LOG_PAGE: usize = 200;

/// One usage log entry, as far as the credit goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry's `_id`; without one, its fields together.
    pub id: String,
    pub bytes: u64,
}

impl Entry {
    /// An entry of the log's JSON, `None` if it has no readable `bytes`.
    pub fn from_json(entry: &Value) -> Option<Entry> {
        let bytes = match entry.get("bytes")? {
            Value::Number(n) => n.as_f64()?,
            // The backend coerces a numeric string the JavaScript way.
            Value::String(s) => s.trim().parse().ok()?,
            _ => return None,
        };
        if !bytes.is_finite() || bytes < 0.0 {
            return None;
        }
        let id = match entry.get("_id").and_then(Value::as_str) {
            Some(id) => id.to_owned(),
            None => format!(
                "{}|{}|{}|{}",
                entry.get("createdAt").unwrap_or(&Value::Null),
                entry.get("code").unwrap_or(&Value::Null),
                entry.get("bytes").unwrap_or(&Value::Null),
                entry.get("consumerId").unwrap_or(&Value::Null),
            ),
        };
        Some(Entry {
            // f64 → u64 saturates; reports are whole bytes.
            bytes: bytes.floor() as u64,
            id,
        })
    }

    fn points(&self) -> u64 {
        self.bytes / MIB
    }

    fn shared(&self) -> u64 {
        if self.bytes >= MIB { self.bytes } else { 0 }
    }
}

/// The account as `GET /api/auth/me` has it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Account {
    pub points: f64,
    /// `None` when it is not a number (the backend's known corruption into text).
    pub bytes_shared: Option<f64>,
}

/// What the account should have and does not, since the baseline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shortfall {
    pub points: u64,
    /// `bytesShared` short; 0 while it cannot be compared (not a number).
    pub bytes: u64,
    /// Log entries since the baseline may have gone unseen (a full page with nothing in
    /// common with the page before): the shortfall may be larger.
    pub entries_missed: bool,
}

/// A reading's difference, signed: a credit seen before its entry makes it negative.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reading {
    points: f64,
    bytes: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
struct Baseline {
    account: Account,
    /// Credit due for the entries counted since.
    points: u64,
    shared: u64,
}

/// The account's reconciliation: a baseline, then readings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reconciler {
    baseline: Option<Baseline>,
    /// The ids of the last page read: the entries already counted (or before the baseline).
    last_page: HashSet<String>,
    entries_missed: bool,
    readings: [Option<Reading>; 2],
}

impl Reconciler {
    /// True once a baseline is taken.
    pub fn has_baseline(&self) -> bool {
        self.baseline.is_some()
    }

    /// Takes the baseline: `account` read first, then `page` (the log, newest first): every
    /// entry listed is counted as before it.
    pub fn baseline(&mut self, account: Account, page: &[Entry]) {
        *self = Reconciler {
            baseline: Some(Baseline {
                account,
                points: 0,
                shared: 0,
            }),
            last_page: page.iter().map(|e| e.id.clone()).collect(),
            ..Reconciler::default()
        };
    }

    /// A reading: `page` (the log, newest first) read first, then `account`. Entries not on
    /// the page before are new since, and due their credit.
    pub fn observe(&mut self, page: &[Entry], account: Account) {
        let Some(base) = self.baseline.as_mut() else {
            return;
        };
        let overlap = page.iter().any(|e| self.last_page.contains(&e.id));
        if page.len() >= LOG_PAGE && !overlap {
            self.entries_missed = true;
        }
        for entry in page.iter().filter(|e| !self.last_page.contains(&e.id)) {
            base.points += entry.points();
            base.shared += entry.shared();
        }
        self.last_page = page.iter().map(|e| e.id.clone()).collect();
        let points = base.account.points + base.points as f64 - account.points;
        let bytes = match (base.account.bytes_shared, account.bytes_shared) {
            (Some(then), Some(now)) => Some(then + base.shared as f64 - now),
            _ => None,
        };
        self.readings = [self.readings[1], Some(Reading { points, bytes })];
    }

    /// The shortfall, once two readings are in: the smaller of the last two.
    pub fn shortfall(&self) -> Option<Shortfall> {
        let [Some(a), Some(b)] = self.readings else {
            return None;
        };
        let whole = |x: f64| x.max(0.0).round() as u64;
        let bytes = match (a.bytes, b.bytes) {
            (Some(x), Some(y)) => whole(x.min(y)),
            _ => 0,
        };
        Some(Shortfall {
            points: whole(a.points.min(b.points)),
            bytes,
            entries_missed: self.entries_missed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(id: u64, bytes: u64) -> Entry {
        Entry {
            id: format!("e{id}"),
            bytes,
        }
    }

    /// The backend's side: a log (oldest first) and the account.
    #[derive(Default)]
    struct Backend {
        log: Vec<Entry>,
        points: u64,
        shared: u64,
        lost_points: u64,
        lost_shared: u64,
    }

    impl Backend {
        /// A report credited (or its credit lost to the race).
        fn report(&mut self, bytes: u64, lost: bool) {
            let e = entry(self.log.len() as u64, bytes);
            if lost {
                self.lost_points += e.points();
                self.lost_shared += e.shared();
            } else {
                self.points += e.points();
                self.shared += e.shared();
            }
            self.log.push(e);
        }

        fn page(&self) -> Vec<Entry> {
            self.log.iter().rev().take(LOG_PAGE).cloned().collect()
        }

        fn account(&self) -> Account {
            Account {
                points: self.points as f64,
                bytes_shared: Some(self.shared as f64),
            }
        }
    }

    #[test]
    fn entries_are_read_from_the_logs_json() {
        let e = Entry::from_json(&serde_json::json!({
            "_id": "65a1", "code": "ABCD2345", "bytes": 3_145_728, "createdAt": "2026-01-01T00:00:00.000Z"
        }))
        .unwrap();
        assert_eq!(
            (e.id.as_str(), e.points(), e.shared()),
            ("65a1", 3, 3_145_728)
        );
        let small = Entry::from_json(&serde_json::json!({"bytes": "1000", "code": "X"})).unwrap();
        assert_eq!((small.points(), small.shared()), (0, 0));
        assert!(small.id.contains("\"X\""));
        assert!(Entry::from_json(&serde_json::json!({"bytes": true})).is_none());
    }

    #[test]
    fn a_lost_credit_is_shown_with_its_size() {
        let mut b = Backend::default();
        b.report(5 * MIB, false);
        let mut r = Reconciler::default();
        r.baseline(b.account(), &b.page());
        b.report(3 * MIB + 7, false);
        b.report(2 * MIB, true);
        b.report(MIB / 2, true);
        r.observe(&b.page(), b.account());
        assert_eq!(r.shortfall(), None, "one reading is not enough");
        r.observe(&b.page(), b.account());
        assert_eq!(
            r.shortfall(),
            Some(Shortfall {
                points: 2,
                bytes: 2 * MIB,
                entries_missed: false
            })
        );
    }

    #[test]
    fn a_credit_on_its_way_is_no_loss() {
        let mut b = Backend::default();
        let mut r = Reconciler::default();
        r.baseline(b.account(), &b.page());
        r.observe(&b.page(), b.account());
        // The entry is written, its credit a moment later (the real service's order).
        b.log.push(entry(0, 4 * MIB));
        r.observe(&b.page(), b.account());
        assert_eq!(r.shortfall().unwrap().points, 0);
        b.points += 4;
        b.shared += 4 * MIB;
        r.observe(&b.page(), b.account());
        assert_eq!(r.shortfall().unwrap(), Shortfall::default());
    }

    #[test]
    fn a_page_with_nothing_in_common_with_the_last_says_entries_were_missed() {
        let mut b = Backend::default();
        let mut r = Reconciler::default();
        r.baseline(b.account(), &b.page());
        for _ in 0..LOG_PAGE + 1 {
            b.report(MIB, false);
        }
        r.observe(&b.page(), b.account());
        r.observe(&b.page(), b.account());
        let s = r.shortfall().unwrap();
        assert!(s.entries_missed);
        assert_eq!(s.points, 0, "never more than the truth: {s:?}");
    }

    proptest! {
        /// Reports credited or lost, pages read between them at random: read often enough
        /// (never more than a page of new entries in between), the shortfall is exactly the
        /// credit lost since the baseline; otherwise it never exceeds it, and says entries
        /// were missed if any were.
        #[test]
        fn the_shortfall_is_what_was_lost(
            before in prop::collection::vec((1u64..5 * MIB, any::<bool>()), 0..30),
            after in prop::collection::vec((1u64..5 * MIB, prop::bool::weighted(0.2), 0usize..120), 1..60),
        ) {
            let mut b = Backend::default();
            for (bytes, lost) in before {
                b.report(bytes, lost);
            }
            let (lost_points, lost_shared) = (b.lost_points, b.lost_shared);
            let mut r = Reconciler::default();
            r.baseline(b.account(), &b.page());
            let mut since_read = 0;
            let mut missed = false;
            for (bytes, lost, burst) in after {
                // A burst of more reports, credited, before this one.
                for _ in 0..burst {
                    b.report(MIB, false);
                }
                b.report(bytes, lost);
                since_read += burst + 1;
                if since_read >= LOG_PAGE {
                    missed = true;
                }
                if since_read > 40 || burst % 3 == 0 {
                    r.observe(&b.page(), b.account());
                    since_read = 0;
                }
            }
            r.observe(&b.page(), b.account());
            r.observe(&b.page(), b.account());
            let s = r.shortfall().unwrap();
            let truth = (b.lost_points - lost_points, b.lost_shared - lost_shared);
            if missed {
                prop_assert!(s.points <= truth.0 && s.bytes <= truth.1, "{s:?} > {truth:?}");
            } else {
                prop_assert_eq!((s.points, s.bytes), truth);
                prop_assert!(!s.entries_missed);
            }
        }
    }
}
