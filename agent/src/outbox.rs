//! The outbox: every message on its way to the stream, in one order, whatever the link does.
//!
//! While the link is up and keeping pace, messages wait in memory (no SD-card writes for a
//! healthy stream). When the link goes down, or falls more than [`MEMORY_LIMIT`] messages
//! behind, everything waiting moves to the [`DiskSpool`] and new messages follow it there
//! until the spool is drained. Invariant: every seq on disk is lower than every seq in
//! memory, so "disk, then memory" is the stream's order.
//!
//! The link takes messages with [`Outbox::next_batch`] and reports what the server confirmed
//! with [`Outbox::confirm_through`]; on a new connection [`Outbox::rewind`] makes every
//! unconfirmed message go out again (at least once: the peer may see a message twice after a
//! reconnect, never miss one within the spool's bound).
//!
//! No tokio in [`Outbox`]: plain calls that do file I/O. One thread owns it and serves the
//! tasks' commands ([`owner`]), so that I/O never runs on the runtime's workers.

use std::collections::VecDeque;
use std::path::Path;

use edgeshare_shared::backend::depin::Reading;
pub use owner::{OutboxError, OutboxHandle, OutboxOwner};

use crate::spool::{Appended, DiskSpool, Entry, Kind, Recovered, SpoolError, SpoolLimits};

pub mod owner;

/// Messages held in memory at most before they go to disk.
pub const MEMORY_LIMIT: usize = 1000;

/// Counters of what the outbox did, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Messages waiting (unconfirmed), memory and disk.
    pub depth: u64,
    pub disk_entries: u64,
    pub disk_bytes: u64,
    /// Sensor samples dropped to keep the disk bound.
    pub dropped: u64,
    /// Sensor samples refused: the spool is full of usage messages.
    pub refused: u64,
    /// Messages confirmed delivered.
    pub confirmed: u64,
    /// Messages lost because the spool could not take them (disk full, I/O error).
    pub lost: u64,
}

#[derive(Debug)]
pub struct Outbox {
    disk: DiskSpool,
    memory: VecDeque<Entry>,
    memory_limit: usize,
    online: bool,
    /// Seq of the next message to hand to the link.
    next_send: u64,
    next_seq: u64,
    confirmed: u64,
    /// Messages that failed to reach the disk and are gone.
    lost: u64,
}

impl Outbox {
    pub fn open(dir: &Path, limits: SpoolLimits) -> Result<(Outbox, Recovered), SpoolError> {
        Self::open_with_memory_limit(dir, limits, MEMORY_LIMIT)
    }

    pub fn open_with_memory_limit(
        dir: &Path,
        limits: SpoolLimits,
        memory_limit: usize,
    ) -> Result<(Outbox, Recovered), SpoolError> {
        let (disk, recovered) = DiskSpool::open(dir, limits)?;
        let next_seq = disk.last_seq() + 1;
        Ok((
            Outbox {
                disk,
                memory: VecDeque::new(),
                memory_limit,
                online: false,
                next_send: 0,
                next_seq,
                confirmed: 0,
                lost: 0,
            },
            recovered,
        ))
    }

    /// Queues one message. A sensor sample may be refused (the spool is full of usage). On an
    /// error the message is lost, and counted in [`OutboxStats::lost`].
    pub fn push(&mut self, kind: Kind, reading: Reading) -> Result<Appended, SpoolError> {
        let entry = Entry {
            seq: self.next_seq,
            kind,
            reading,
        };
        self.next_seq += 1;
        let memory_ok = self.online && (self.disk.is_empty() || !self.memory.is_empty());
        if memory_ok && self.memory.len() < self.memory_limit {
            self.memory.push_back(entry);
            return Ok(Appended {
                written: 1,
                ..Appended::default()
            });
        }
        // To disk; whatever is in memory is older and must go first.
        let pushed = self.spill().and_then(|mut result| {
            let one = self.disk.append(std::slice::from_ref(&entry))?;
            result.written += one.written;
            result.refused += one.refused;
            result.evicted += one.evicted;
            Ok(result)
        });
        if pushed.is_err() {
            // The spill keeps what it could not write in memory; only this message is gone.
            self.lost += 1;
        }
        pushed
    }

    /// Moves every message in memory to disk, in order.
    fn spill(&mut self) -> Result<Appended, SpoolError> {
        if self.memory.is_empty() {
            return Ok(Appended::default());
        }
        // Memory is cleared only once the disk has them: a failed write (disk full) loses
        // nothing; at worst some are on disk and in memory, and go out twice.
        let entries: Vec<Entry> = self.memory.iter().cloned().collect();
        let appended = self.disk.append(&entries)?;
        self.memory.clear();
        Ok(appended)
    }

    /// The link is up (messages may wait in memory) or down (everything goes to disk).
    pub fn set_online(&mut self, online: bool) -> Result<(), SpoolError> {
        self.online = online;
        if !online {
            self.spill()?;
        }
        Ok(())
    }

    /// A new connection: every unconfirmed message is to be sent again, oldest first.
    pub fn rewind(&mut self) {
        self.next_send = 0;
    }

    /// Up to `max` messages not yet handed to the link, in order.
    pub fn next_batch(&mut self, max: usize) -> Result<Vec<Entry>, SpoolError> {
        let mut batch = self.disk.read_from(self.next_send, max)?;
        if batch.len() < max {
            let from = self.next_send;
            let room = max - batch.len();
            batch.extend(
                self.memory
                    .iter()
                    .filter(|e| e.seq >= from)
                    .take(room)
                    .cloned(),
            );
        }
        if let Some(last) = batch.last() {
            self.next_send = last.seq + 1;
        }
        Ok(batch)
    }

    /// True if [`Outbox::next_batch`] would return something.
    pub fn has_unsent(&self) -> bool {
        let from = self.next_send;
        self.memory.back().is_some_and(|e| e.seq >= from)
            || self.disk.newest().is_some_and(|seq| seq >= from)
    }

    /// Every message up to `seq` is delivered.
    pub fn confirm_through(&mut self, seq: u64) -> Result<(), SpoolError> {
        while self.memory.front().is_some_and(|e| e.seq <= seq) {
            self.memory.pop_front();
            self.confirmed += 1;
        }
        // Only when it concerns the disk: confirming messages that never left memory must
        // not rewrite the head file (a healthy stream writes nothing to the SD card). Seqs
        // of memory messages may then be used again after a restart, which is harmless:
        // new seqs always follow what is on disk.
        if self.disk.oldest().is_some_and(|oldest| oldest <= seq) {
            let before = self.disk.len();
            self.disk.confirm_through(seq)?;
            self.confirmed += before - self.disk.len();
        }
        Ok(())
    }

    /// Makes the disk part durable.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        self.disk.sync()
    }

    /// For shutdown: everything still waiting goes to disk, durably.
    pub fn flush_all(&mut self) -> Result<(), SpoolError> {
        self.spill()?;
        self.disk.sync()
    }

    pub fn stats(&self) -> OutboxStats {
        OutboxStats {
            depth: self.disk.len() + self.memory.len() as u64,
            disk_entries: self.disk.len(),
            disk_bytes: self.disk.bytes(),
            dropped: self.disk.dropped(),
            refused: self.disk.refused(),
            confirmed: self.confirmed,
            lost: self.lost,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::tests::reading;

    fn ns(entries: &[Entry]) -> Vec<u64> {
        entries
            .iter()
            .map(|e| e.reading.data["n"].as_u64().unwrap())
            .collect()
    }

    fn open(dir: &Path, memory_limit: usize) -> Outbox {
        Outbox::open_with_memory_limit(dir, SpoolLimits::with_max_bytes(1 << 20), memory_limit)
            .unwrap()
            .0
    }

    /// An outbox in `dir` as [`open`] makes it, with its link up.
    fn online(dir: &Path, memory_limit: usize) -> Outbox {
        let mut out = open(dir, memory_limit);
        out.set_online(true).unwrap();
        out
    }

    #[test]
    fn online_messages_stay_in_memory_and_offline_ones_go_to_disk_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = online(dir.path(), 100);
        for n in 1..=3 {
            out.push(Kind::Sensor, reading(n)).unwrap();
        }
        assert_eq!(out.stats().disk_entries, 0);
        assert_eq!(ns(&out.next_batch(2).unwrap()), vec![1, 2]);
        out.confirm_through(1).unwrap();
        // The link drops: 2 (sent, unconfirmed) and 3 go to disk, then 4 and 5 follow.
        out.set_online(false).unwrap();
        out.push(Kind::Sensor, reading(4)).unwrap();
        out.push(Kind::Usage, reading(5)).unwrap();
        assert_eq!(out.stats().disk_entries, 4);
        // Back up: new messages queue behind the disk until it is drained.
        out.set_online(true).unwrap();
        out.rewind();
        out.push(Kind::Sensor, reading(6)).unwrap();
        assert_eq!(out.stats().disk_entries, 5);
        assert_eq!(ns(&out.next_batch(10).unwrap()), vec![2, 3, 4, 5, 6]);
        assert!(!out.has_unsent());
        let last = out.next_seq - 1;
        out.confirm_through(last).unwrap();
        assert_eq!(out.stats().depth, 0);
        assert_eq!(out.stats().confirmed, 6);
        // Drained: memory again.
        out.push(Kind::Sensor, reading(7)).unwrap();
        assert_eq!(out.stats().disk_entries, 0);
        assert!(out.has_unsent());
    }

    #[test]
    fn a_stream_that_keeps_pace_writes_nothing_to_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = online(dir.path(), 100);
        for n in 1..=50 {
            out.push(Kind::Sensor, reading(n)).unwrap();
            let sent = out.next_batch(10).unwrap();
            out.confirm_through(sent.last().unwrap().seq).unwrap();
            out.sync().unwrap();
        }
        assert_eq!(out.stats().confirmed, 50);
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(files.is_empty(), "{files:?}");
    }

    #[test]
    fn a_slow_link_spills_to_disk_without_reordering() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = online(dir.path(), 3);
        for n in 1..=10 {
            out.push(Kind::Sensor, reading(n)).unwrap();
        }
        assert!(out.stats().disk_entries > 0);
        let mut seen = Vec::new();
        loop {
            let batch = out.next_batch(4).unwrap();
            if batch.is_empty() {
                break;
            }
            seen.extend(ns(&batch));
        }
        assert_eq!(seen, (1..=10).collect::<Vec<_>>());
    }

    #[test]
    fn unconfirmed_messages_are_sent_again_after_a_rewind_and_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = open(dir.path(), 100);
        for n in 1..=4 {
            out.push(Kind::Sensor, reading(n)).unwrap();
        }
        out.set_online(true).unwrap();
        assert_eq!(ns(&out.next_batch(10).unwrap()), vec![1, 2, 3, 4]);
        out.confirm_through(2).unwrap();
        out.rewind();
        assert_eq!(ns(&out.next_batch(10).unwrap()), vec![3, 4]);
        out.push(Kind::Sensor, reading(5)).unwrap();
        out.flush_all().unwrap();
        drop(out);
        let mut out = online(dir.path(), 100);
        assert_eq!(ns(&out.next_batch(10).unwrap()), vec![3, 4, 5]);
        out.push(Kind::Sensor, reading(6)).unwrap();
        assert_eq!(ns(&out.next_batch(10).unwrap()), vec![6]);
    }
}
