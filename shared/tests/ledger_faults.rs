//! Fault injection on the ledger as an SD card does it: a segment that lost its writes (left
//! empty), and the high-water mark lost with it. After each fault the gateway's writer goes on
//! with its sessions, and a reader that keeps a cursor as the agent does must still receive
//! every byte: each case prints the usage it lost, which must be 0.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use std::collections::HashMap;
use std::path::Path;

use edgeshare_shared::ledger::{LedgerLimits, LedgerReader, LedgerWriter, UsageUpdate};

const MB: u64 = 1_000_000;

fn update(session: &str, total: u64) -> UsageUpdate {
    UsageUpdate {
        session: session.to_owned(),
        code: session[..8].to_owned(),
        up: total / 10,
        down: total - total / 10,
        ended: None,
        consumer: None,
    }
}

/// What the agent does with the ledger: a cursor, each session's highest total taken in, and
/// (on the reader's word) the cursor set back when the numbers went back.
#[derive(Default)]
struct Agent {
    cursor: u64,
    seen: HashMap<String, u64>,
    went_back: u32,
}

impl Agent {
    fn poll(&mut self, reader: &mut LedgerReader) {
        let read = reader.read_since(self.cursor).unwrap();
        if read.went_back.is_some() {
            self.went_back += 1;
            self.cursor = 0;
        }
        for r in read.records {
            assert!(r.seq > self.cursor || read.went_back.is_some());
            self.cursor = self.cursor.max(r.seq);
            let seen = self.seen.entry(r.session.clone()).or_default();
            *seen = (*seen).max(r.total());
        }
    }

    fn lost(&self, truth: &HashMap<String, u64>) -> u64 {
        truth
            .iter()
            .map(|(s, t)| t - self.seen.get(s).copied().unwrap_or(0).min(*t))
            .sum()
    }
}

/// The only segment is emptied, as a card that lost its writes leaves it.
fn empty_segments(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(0)
                .unwrap();
        }
    }
}

/// A gateway's ledger directory, what its sessions used, and the agent reading it.
struct Card {
    dir: tempfile::TempDir,
    truth: HashMap<String, u64>,
    agent: Agent,
    reader: LedgerReader,
}

impl Card {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let reader = LedgerReader::open(dir.path()).unwrap();
        Card {
            dir,
            truth: HashMap::new(),
            agent: Agent::default(),
            reader,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `rounds` growing totals of `session`, the agent polling after each; returns the
    /// first and last number the writer handed out.
    fn run_session(&mut self, session: &str, bytes: u64, rounds: u64) -> (u64, u64) {
        let mut w = LedgerWriter::open(self.dir.path(), LedgerLimits::default()).unwrap();
        let (mut first, mut last) = (u64::MAX, 0);
        for i in 1..=rounds {
            let total = bytes * i / rounds;
            for r in w.append(&[update(session, total)]).unwrap() {
                first = first.min(r.seq);
                last = last.max(r.seq);
            }
            self.truth.insert(session.to_owned(), total);
            self.agent.poll(&mut self.reader);
        }
        (first, last)
    }

    /// Bytes the sessions used that the agent never saw.
    fn lost(&self) -> u64 {
        self.agent.lost(&self.truth)
    }
}

#[test]
fn an_emptied_segment_never_makes_the_sequence_go_back_and_no_usage_is_lost() {
    let mut card = Card::new();

    let (_, before) = card.run_session("AAAA2345-1", 5 * MB, 12);
    // The card loses the segment's writes; the gateway restarts and a 20.9 MB session runs.
    empty_segments(card.path());
    let (after, _) = card.run_session("BBBB2345-1", 20_900_000, 10);
    let lost = card.lost();
    println!(
        "ledger fault, segment emptied: numbers went on at {after} after {before} before; usage lost {lost} bytes of {}",
        card.truth.values().sum::<u64>()
    );
    assert!(
        after > before,
        "the sequence went back: {after} after {before}"
    );
    assert_eq!(card.agent.went_back, 0);
    assert_eq!(lost, 0);
}

/// The high-water mark is lost too: the writer can only number from what it finds, so numbers
/// are handed out again. The reader notices, both when the ledger then ends below the cursor
/// and when it has already grown past it, and hands everything out again.
#[test]
fn numbers_handed_out_again_are_noticed_by_the_reader_and_no_usage_is_lost() {
    for (case, rounds_after) in [("ends below the cursor", 3), ("grew past the cursor", 30)] {
        let mut card = Card::new();
        let (_, before) = card.run_session("AAAA2345-1", 5 * MB, 12);
        empty_segments(card.path());
        std::fs::remove_file(card.path().join("seq.hwm")).unwrap();
        // A millisecond later, so a record under a reused number differs in its time.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let (after, _) = card.run_session("BBBB2345-1", 20_900_000, rounds_after);
        let lost = card.lost();
        println!(
            "ledger fault, segment and high-water mark lost ({case}): numbers restarted at {after} after {before}; the reader said so {} time(s); usage lost {lost} bytes",
            card.agent.went_back
        );
        assert!(after <= before, "{case}: the fault was not reproduced");
        assert_eq!(card.agent.went_back, 1, "{case}");
        assert_eq!(lost, 0, "{case}");
    }
}
