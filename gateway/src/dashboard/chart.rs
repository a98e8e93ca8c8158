//! Usage over the day and the week, from the usage ledger: bytes per hour, and an SVG bar
//! chart of them. Pure: records in, buckets and markup out.
//!
//! A ledger record holds a session's *cumulative* bytes, so the bytes of a period are the
//! growth between a session's records. The growth up to a session's first record that is
//! still in the ledger is spread evenly from the session's start (in its id) to that record:
//! the ledger's compaction keeps only each session's latest record, so an old session's
//! hours are an even spread, while recent ones are exact to the record.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use edgeshare_shared::ledger::UsageRecord;

pub const HOUR_MS: u64 = 3_600_000;
pub const DAY_MS: u64 = 24 * HOUR_MS;
/// Hours kept: a week and a day, so the week's chart is whole.
const KEEP_HOURS: u64 = 8 * 24;

/// Bytes per hour, built from ledger records as they come.
#[derive(Debug, Default, Clone)]
pub struct UsageChart {
    /// Each live session's last cumulative total; an ended session leaves.
    totals: HashMap<String, u64>,
    /// Hour number (ms / [`HOUR_MS`]) → bytes.
    hours: BTreeMap<u64, u64>,
}

/// The start of a session, from its id (`<quota id>-<start ms>`).
fn session_start(session: &str) -> Option<u64> {
    session.rsplit_once('-')?.1.parse().ok()
}

impl UsageChart {
    /// Takes one record in (records of a session in ledger order).
    pub fn take(&mut self, record: &UsageRecord) {
        let total = record.total();
        match self.totals.get(&record.session) {
            Some(&before) => self.add_at(record.at_ms, total.saturating_sub(before)),
            None => {
                let start = session_start(&record.session)
                    .filter(|&start| start <= record.at_ms)
                    .unwrap_or(record.at_ms);
                self.spread(start, record.at_ms, total);
            }
        }
        if record.ended.is_some() {
            self.totals.remove(&record.session);
        } else {
            self.totals.insert(record.session.clone(), total);
        }
    }

    fn add_at(&mut self, at_ms: u64, bytes: u64) {
        if bytes > 0 {
            *self.hours.entry(at_ms / HOUR_MS).or_default() += bytes;
        }
    }

    /// `bytes` spread over `[from, to]` in proportion to the time in each hour; what the
    /// integer division leaves goes to the last hour, so nothing is lost.
    fn spread(&mut self, from: u64, to: u64, bytes: u64) {
        let span = to - from;
        if span == 0 || bytes == 0 {
            self.add_at(to, bytes);
            return;
        }
        let mut given = 0u64;
        let mut hour = from / HOUR_MS;
        while hour < to / HOUR_MS {
            let start = (hour * HOUR_MS).max(from);
            let end = (hour + 1) * HOUR_MS;
            let share =
                u64::try_from(u128::from(bytes) * u128::from(end - start) / u128::from(span))
                    .unwrap_or(u64::MAX);
            if share > 0 {
                *self.hours.entry(hour).or_default() += share;
            }
            given += share;
            hour += 1;
        }
        self.add_at(to, bytes - given);
    }

    /// Forgets hours older than a week and a day before `now_ms`.
    pub fn prune(&mut self, now_ms: u64) {
        let oldest = (now_ms / HOUR_MS).saturating_sub(KEEP_HOURS);
        self.hours = self.hours.split_off(&oldest);
    }

    /// Bytes of each of the `count` periods of `period_ms` that end with the one holding
    /// `now_ms` (periods aligned to UTC), oldest first, each with its start.
    pub fn periods(&self, now_ms: u64, period_ms: u64, count: u64) -> Vec<(u64, u64)> {
        let hours_per = (period_ms / HOUR_MS).max(1);
        let last = now_ms / period_ms;
        (last.saturating_sub(count - 1)..=last)
            .map(|period| {
                let first_hour = period * hours_per;
                let bytes = self
                    .hours
                    .range(first_hour..first_hour + hours_per)
                    .map(|(_, b)| b)
                    .sum();
                (period * period_ms, bytes)
            })
            .collect()
    }
}

/// A bar chart as inline SVG: one bar per `(label, bytes)`, each with a tooltip, a label
/// under every `label_every`-th bar, and the tallest bar's size on the axis. Every text is
/// escaped here.
pub fn bars(title: &str, bars: &[(String, u64)], label_every: usize) -> String {
    const W: usize = 480;
    const H: usize = 140;
    const TOP: usize = 16;
    const AXIS: usize = 18;
    let most = bars.iter().map(|(_, b)| *b).max().unwrap_or(0);
    let slot = W as f64 / bars.len().max(1) as f64;
    let mut svg = format!(
        "<svg viewBox=\"0 0 {W} {}\" role=\"img\" aria-label=\"{}\" class=\"chart\">",
        H + AXIS,
        crate::portal::escape(title)
    );
    let _ = write!(
        svg,
        "<text x=\"0\" y=\"11\" class=\"axis\">max {}</text>",
        crate::portal::escape(&human_bytes(most))
    );
    for (i, (label, bytes)) in bars.iter().enumerate() {
        let height = if most == 0 {
            0.0
        } else {
            (H - TOP) as f64 * *bytes as f64 / most as f64
        };
        let x = i as f64 * slot;
        let _ = write!(
            svg,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{height:.1}\"><title>{}: {}</title></rect>",
            x + slot * 0.1,
            H as f64 - height,
            slot * 0.8,
            crate::portal::escape(label),
            crate::portal::escape(&human_bytes(*bytes))
        );
        if i % label_every.max(1) == 0 {
            let _ = write!(
                svg,
                "<text x=\"{:.1}\" y=\"{}\" class=\"axis\">{}</text>",
                x + slot * 0.1,
                H + AXIS - 4,
                crate::portal::escape(label)
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// Bytes as a person reads them: `0 B`, `512 B`, `1.5 MiB`, `2.0 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(session: &str, at_ms: u64, total: u64, ended: bool) -> UsageRecord {
        UsageRecord {
            seq: 0,
            at_ms,
            session: session.to_owned(),
            code: "ABCD2345".to_owned(),
            up: total / 3,
            down: total - total / 3,
            ended: ended.then(|| "quota".to_owned()),
            consumer: None,
        }
    }

    #[test]
    fn growth_between_records_lands_in_the_hour_of_the_later_record() {
        let mut chart = UsageChart::default();
        let start = 100 * HOUR_MS;
        let s = format!("aa-{start}");
        chart.take(&record(&s, start + 1000, 0, false));
        chart.take(&record(&s, start + 2 * HOUR_MS + 5, 7_000, false));
        chart.take(&record(&s, start + 3 * HOUR_MS + 5, 10_000, true));
        let hours = chart.periods(start + 3 * HOUR_MS, HOUR_MS, 4);
        assert_eq!(
            hours,
            vec![
                (start, 0),
                (start + HOUR_MS, 0),
                (start + 2 * HOUR_MS, 7_000),
                (start + 3 * HOUR_MS, 3_000)
            ]
        );
        assert!(chart.totals.is_empty(), "an ended session is forgotten");
    }

    #[test]
    fn a_sessions_first_record_is_spread_from_its_start() {
        let mut chart = UsageChart::default();
        let start = 10 * HOUR_MS + HOUR_MS / 2;
        chart.take(&record(
            &format!("bb-{start}"),
            start + 2 * HOUR_MS,
            4_000,
            true,
        ));
        let hours: Vec<u64> = chart
            .periods(12 * HOUR_MS, HOUR_MS, 3)
            .into_iter()
            .map(|(_, b)| b)
            .collect();
        assert_eq!(hours, vec![1_000, 2_000, 1_000]);
    }

    #[test]
    fn days_add_their_hours_and_pruning_keeps_a_week() {
        let mut chart = UsageChart::default();
        let now = 30 * DAY_MS + 5 * HOUR_MS;
        for day in 0..10 {
            let at = now - day * DAY_MS;
            chart.take(&record(&format!("s{day}-{at}"), at, 1_000 + day, true));
        }
        chart.prune(now);
        let days = chart.periods(now, DAY_MS, 7);
        assert_eq!(days.len(), 7);
        assert_eq!(days[6], (30 * DAY_MS, 1_000));
        assert_eq!(days[0], (24 * DAY_MS, 1_006));
        assert_eq!(chart.periods(now, DAY_MS, 10)[0].1, 0, "pruned past 8 days");
    }

    #[test]
    fn bars_escape_their_text_and_scale_to_the_tallest() {
        let svg = bars(
            "<b>",
            &[
                ("<x>".to_owned(), 10),
                ("y".to_owned(), 5),
                ("z".to_owned(), 0),
            ],
            1,
        );
        assert!(!svg.contains("<b>") && !svg.contains("<x>"));
        assert!(svg.contains("&lt;x&gt;"));
        assert!(svg.contains("height=\"124.0\""), "{svg}");
        assert!(svg.contains("height=\"62.0\""), "{svg}");
        assert!(svg.contains("max 10 B"));
    }

    #[test]
    fn bytes_read_as_people_read_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }

    proptest! {
        /// Every byte of every session lands in exactly one hour: the hours add up to the
        /// sessions' last totals, however the records fall.
        #[test]
        fn the_hours_add_up_to_the_sessions_totals(
            sessions in proptest::collection::vec(
                (0u64..50 * HOUR_MS, proptest::collection::vec((1u64..5 * HOUR_MS, 0u64..1 << 30), 1..8)),
                1..6,
            ),
        ) {
            let mut records = Vec::new();
            let mut expected = 0u64;
            for (i, (start, steps)) in sessions.iter().enumerate() {
                let (mut at, mut total) = (*start, 0u64);
                for (n, (gap, grow)) in steps.iter().enumerate() {
                    at += gap;
                    total += grow;
                    records.push(record(&format!("q{i}-{start}"), at, total, n + 1 == steps.len()));
                }
                expected += total;
            }
            records.sort_by_key(|r| r.at_ms);
            let mut chart = UsageChart::default();
            for r in &records {
                chart.take(r);
            }
            let sum: u64 = chart.hours.values().sum();
            prop_assert_eq!(sum, expected);
        }
    }
}
