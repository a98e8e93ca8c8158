//! The disk spool: messages waiting for the stream, kept in order across reconnects, agent
//! restarts and power cuts, within a disk bound.
//!
//! Files in the spool directory:
//! - `spool-<first seq>.jsonl` segments, one entry per line: `<fnv-1a 64 hex> <json>\n`, the
//!   JSON being `{"seq", "kind", "reading"}`. The checksum tells a line torn by a power cut
//!   (or zeros from a lost page) from a good one. Appends go to the newest segment; a new one
//!   starts when it passes [`SpoolLimits::segment_bytes`].
//! - `head`: the last seq confirmed delivered. Entries up to it are skipped on open; a
//!   segment whose entries are all confirmed is deleted.
//!
//! Crash safety: on open a torn or corrupt tail of the newest segment is cut off; a corrupt
//! line elsewhere is skipped and counted. `head` is written atomically, so after a crash at
//! worst a few confirmed entries are sent again (at least once, never lost).
//!
//! The bound: when an append would pass [`SpoolLimits::max_bytes`], the oldest segment
//! holding sensor samples is rewritten without them (atomically: temp file, fsync, rename);
//! usage entries are kept, always. If only usage is left, new sensor samples are refused
//! and counted; usage is still taken (and a warning logged), because it is never dropped.
//!
//! No tokio here: plain file I/O, called from a blocking context by [`crate::outbox`].

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use edgeshare_shared::backend::depin::Reading;
use serde::{Deserialize, Serialize};

const SEGMENT_PREFIX: &str = "spool-";
const SEGMENT_SUFFIX: &str = ".jsonl";
const HEAD_FILE: &str = "head";

/// What a message is; decides what may be dropped when the spool is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A sensor or system sample: the oldest go first when the spool is full.
    Sensor,
    /// The gateway's usage: never dropped.
    Usage,
}

/// One message with its place in the stream's order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub kind: Kind,
    pub reading: Reading,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolLimits {
    /// Disk used by segments at most (usage entries may pass it; see the module docs).
    pub max_bytes: u64,
    /// A segment is closed once it is this big.
    pub segment_bytes: u64,
}

impl SpoolLimits {
    /// Segments of a sixteenth of the bound (at most 1 MiB), so that making room drops a
    /// small part of the oldest data, not half of it.
    pub fn with_max_bytes(max_bytes: u64) -> Self {
        SpoolLimits {
            max_bytes,
            segment_bytes: (max_bytes / 16).clamp(4096, 1024 * 1024),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {}: {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("spool {}: bad head file ({text:?}); delete it to resend everything in the spool", path.display())]
    BadHead { path: PathBuf, text: String },
}

fn io_err<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        action,
        source,
    }
}

/// What opening found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Entries waiting to be sent.
    pub entries: u64,
    /// Bytes cut off a torn tail.
    pub cut_bytes: u64,
    /// Corrupt lines skipped elsewhere.
    pub corrupt_lines: u64,
}

/// What one append did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    pub written: u64,
    /// Sensor samples refused: the spool is full of usage.
    pub refused: u64,
    /// Older sensor samples dropped to make room.
    pub evicted: u64,
}

/// One segment file and an index of its live entries (seq and byte offset).
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    bytes: u64,
    index: VecDeque<(u64, u64)>,
    sensors: u64,
}

/// FNV-1a, 64 bit: enough to tell a torn or zeroed line from a whole one.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// One line of a segment, newline included.
pub fn encode_line(entry: &Entry) -> Vec<u8> {
    // Serialising a struct of numbers, strings and a JSON map cannot fail.
    let json = serde_json::to_vec(entry).unwrap_or_default();
    let mut line = format!("{:016x} ", checksum(&json)).into_bytes();
    line.extend_from_slice(&json);
    line.push(b'\n');
    line
}

/// Reads one line (without its newline); `None` if torn, corrupt or not an entry.
pub fn decode_line(line: &[u8]) -> Option<Entry> {
    let text = std::str::from_utf8(line).ok()?;
    let (sum, json) = text.split_once(' ')?;
    let sum = u64::from_str_radix(sum, 16).ok()?;
    if sum != checksum(json.as_bytes()) {
        return None;
    }
    serde_json::from_str(json).ok()
}

/// The disk spool. See the module docs.
#[derive(Debug)]
pub struct DiskSpool {
    dir: PathBuf,
    limits: SpoolLimits,
    segments: VecDeque<Segment>,
    /// Every seq up to this is delivered.
    head: u64,
    head_on_disk: u64,
    /// The highest seq ever written (or confirmed).
    last_seq: u64,
    tail: Option<File>,
    unsynced: bool,
    dropped: u64,
    refused: u64,
}

impl DiskSpool {
    /// Opens (creating) the spool in `dir`, cutting a torn tail.
    pub fn open(dir: &Path, limits: SpoolLimits) -> Result<(DiskSpool, Recovered), SpoolError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir, "creating the directory"))?;
        let head_path = dir.join(HEAD_FILE);
        let head = match std::fs::read_to_string(&head_path) {
            Ok(text) => text.trim().parse().map_err(|_| SpoolError::BadHead {
                path: head_path.clone(),
                text: text.chars().take(40).collect(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err(&head_path, "reading")(e)),
        };
        let mut paths: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
            .map_err(io_err(dir, "listing"))?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let first = name
                    .strip_prefix(SEGMENT_PREFIX)?
                    .strip_suffix(SEGMENT_SUFFIX)?
                    .parse()
                    .ok()?;
                Some((first, e.path()))
            })
            .collect();
        paths.sort();
        let mut recovered = Recovered::default();
        let mut segments = VecDeque::new();
        let mut last_seq = head;
        let count = paths.len();
        for (i, (_, path)) in paths.into_iter().enumerate() {
            let newest = i + 1 == count;
            let (segment, good_end, (corrupt, trailing), max_seq) = scan(&path, head)?;
            last_seq = last_seq.max(max_seq);
            if newest && good_end < segment.bytes {
                // A torn tail: the last write did not complete. Cut it so appends continue
                // from a whole line.
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path, "opening to cut a torn tail"))?;
                file.set_len(good_end)
                    .and_then(|()| file.sync_all())
                    .map_err(io_err(&path, "cutting a torn tail"))?;
                recovered.cut_bytes += segment.bytes - good_end;
                tracing::warn!(
                    path = %path.display(),
                    bytes = segment.bytes - good_end,
                    "spool: cut a torn tail (an unfinished write before a crash or power cut)"
                );
                recovered.corrupt_lines += corrupt;
            } else {
                // Not the newest: nothing was being written there, all damage counts.
                recovered.corrupt_lines += corrupt + trailing;
            }
            let segment = Segment {
                bytes: good_end.max(if newest { 0 } else { segment.bytes }),
                ..segment
            };
            if segment.index.is_empty() && !newest {
                std::fs::remove_file(&segment.path)
                    .map_err(io_err(&segment.path, "removing a delivered segment"))?;
                continue;
            }
            recovered.entries += segment.index.len() as u64;
            segments.push_back(segment);
        }
        if recovered.corrupt_lines > 0 {
            tracing::warn!(
                lines = recovered.corrupt_lines,
                dir = %dir.display(),
                "spool: skipped corrupt lines"
            );
        }
        let spool = DiskSpool {
            dir: dir.to_owned(),
            limits,
            segments,
            head,
            head_on_disk: head,
            last_seq,
            tail: None,
            unsynced: false,
            dropped: 0,
            refused: 0,
        };
        Ok((spool, recovered))
    }

    /// The highest seq ever stored or confirmed: new entries must come after it.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The seq of the oldest entry waiting, if any.
    pub fn oldest(&self) -> Option<u64> {
        self.segments
            .iter()
            .find_map(|s| s.index.front().map(|&(seq, _)| seq))
    }

    /// The seq of the newest entry waiting, if any.
    pub fn newest(&self) -> Option<u64> {
        self.segments
            .iter()
            .rev()
            .find_map(|s| s.index.back().map(|&(seq, _)| seq))
    }

    /// Entries waiting.
    pub fn len(&self) -> u64 {
        self.segments.iter().map(|s| s.index.len() as u64).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.segments.iter().all(|s| s.index.is_empty())
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Sensor samples dropped to make room, since open.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Sensor samples refused because the spool was full of usage, since open.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Appends entries (seqs increasing, after [`DiskSpool::last_seq`]), making room first.
    /// Not synced: call [`DiskSpool::sync`].
    pub fn append(&mut self, entries: &[Entry]) -> Result<Appended, SpoolError> {
        let mut result = Appended::default();
        for entry in entries {
            let line = encode_line(entry);
            let size = line.len() as u64;
            while self.bytes() + size > self.limits.max_bytes {
                let evicted = self.evict_oldest_sensors()?;
                if evicted == 0 {
                    break;
                }
                result.evicted += evicted;
            }
            if self.bytes() + size > self.limits.max_bytes {
                if entry.kind == Kind::Sensor {
                    result.refused += 1;
                    self.refused += 1;
                    continue;
                }
                tracing::warn!(
                    bytes = self.bytes(),
                    max_bytes = self.limits.max_bytes,
                    "spool full of usage messages: keeping this one past the bound (usage is never dropped)"
                );
            }
            self.write_line(entry, &line)?;
            result.written += 1;
        }
        Ok(result)
    }

    fn write_line(&mut self, entry: &Entry, line: &[u8]) -> Result<(), SpoolError> {
        let rotate = self
            .segments
            .back()
            .is_none_or(|s| s.bytes >= self.limits.segment_bytes);
        if rotate {
            self.sync()?;
            self.tail = None;
            let path = self
                .dir
                .join(format!("{SEGMENT_PREFIX}{:020}{SEGMENT_SUFFIX}", entry.seq));
            self.segments.push_back(Segment {
                path,
                bytes: 0,
                index: VecDeque::new(),
                sensors: 0,
            });
        }
        let Some(segment) = self.segments.back_mut() else {
            return Ok(()); // cannot happen: a segment was pushed above if there was none
        };
        let file = match &mut self.tail {
            Some(file) => file,
            None => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&segment.path)
                    .map_err(io_err(&segment.path, "opening for append"))?;
                if rotate {
                    sync_dir(&self.dir)?;
                }
                self.tail.insert(file)
            }
        };
        if let Err(err) = file.write_all(line) {
            // A full disk may take part of the line: cut it off, or the next line appended
            // would be glued to it and fail its checksum too.
            if file.set_len(segment.bytes).is_err() {
                self.tail = None;
            }
            return Err(io_err(&segment.path, "appending")(err));
        }
        segment.index.push_back((entry.seq, segment.bytes));
        segment.bytes += line.len() as u64;
        if entry.kind == Kind::Sensor {
            segment.sensors += 1;
        }
        self.last_seq = self.last_seq.max(entry.seq);
        self.unsynced = true;
        Ok(())
    }

    /// Rewrites the oldest segment holding sensor samples without them; returns how many
    /// went (0: there are none, only usage is left).
    fn evict_oldest_sensors(&mut self) -> Result<u64, SpoolError> {
        let Some(i) = self.segments.iter().position(|s| s.sensors > 0) else {
            return Ok(0);
        };
        if i + 1 == self.segments.len() {
            // The segment being appended to is replaced by a new file: later appends must
            // open that one.
            self.sync()?;
            self.tail = None;
        }
        let segment = &self.segments[i];
        let live: Vec<Entry> = read_entries(&segment.path, self.head)?;
        let mut rewritten = Vec::new();
        let mut index = VecDeque::new();
        let mut dropped = 0;
        for entry in &live {
            if entry.kind == Kind::Sensor {
                dropped += 1;
            } else {
                index.push_back((entry.seq, rewritten.len() as u64));
                rewritten.extend_from_slice(&encode_line(entry));
            }
        }
        let path = segment.path.clone();
        if index.is_empty() {
            std::fs::remove_file(&path).map_err(io_err(&path, "removing an evicted segment"))?;
            sync_dir(&self.dir)?;
            self.segments.remove(i);
        } else {
            edgeshare_shared::secret::write_atomic(&path, &rewritten, 0o600)
                .map_err(io_err(&path, "rewriting without its sensor samples"))?;
            let seg = &mut self.segments[i];
            seg.bytes = rewritten.len() as u64;
            seg.index = index;
            seg.sensors = 0;
        }
        self.dropped += dropped;
        tracing::warn!(
            dropped,
            total_dropped = self.dropped,
            "spool full: dropped the oldest sensor samples"
        );
        Ok(dropped)
    }

    /// Up to `max` entries with seq >= `from`, in order.
    pub fn read_from(&self, from: u64, max: usize) -> Result<Vec<Entry>, SpoolError> {
        let mut out = Vec::new();
        for segment in &self.segments {
            if out.len() >= max {
                break;
            }
            let Some(&(last, _)) = segment.index.back() else {
                continue;
            };
            if last < from {
                continue;
            }
            let start = segment.index.partition_point(|&(seq, _)| seq < from);
            let Some(&(_, offset)) = segment.index.get(start) else {
                continue;
            };
            let file = File::open(&segment.path).map_err(io_err(&segment.path, "opening"))?;
            let mut reader = BufReader::new(file);
            reader
                .seek(SeekFrom::Start(offset))
                .map_err(io_err(&segment.path, "seeking"))?;
            let mut line = Vec::new();
            while out.len() < max {
                line.clear();
                let n = reader
                    .read_until(b'\n', &mut line)
                    .map_err(io_err(&segment.path, "reading"))?;
                if n == 0 || line.last() != Some(&b'\n') {
                    break;
                }
                if let Some(entry) = decode_line(&line[..line.len() - 1])
                    && entry.seq >= from
                {
                    out.push(entry);
                }
            }
        }
        Ok(out)
    }

    /// Every entry up to `seq` is delivered: forget them (deleting segments that are done).
    /// The head file is written by [`DiskSpool::sync`].
    pub fn confirm_through(&mut self, seq: u64) -> Result<(), SpoolError> {
        if seq <= self.head {
            return Ok(());
        }
        self.head = seq;
        self.last_seq = self.last_seq.max(seq);
        let mut count = self.segments.len();
        while let Some(front) = self.segments.front_mut() {
            while front.index.front().is_some_and(|&(s, _)| s <= seq) {
                front.index.pop_front();
            }
            if front.index.is_empty() && count > 1 {
                count -= 1;
                let path = front.path.clone();
                std::fs::remove_file(&path)
                    .map_err(io_err(&path, "removing a delivered segment"))?;
                self.segments.pop_front();
            } else {
                break;
            }
        }
        // An emptied tail segment is reset, so the spool does not keep a delivered file.
        if let Some(only) = self.segments.front()
            && self.segments.len() == 1
            && only.index.is_empty()
            && only.bytes > 0
        {
            let path = only.path.clone();
            self.tail = None;
            std::fs::remove_file(&path).map_err(io_err(&path, "removing a delivered segment"))?;
            self.segments.clear();
        }
        Ok(())
    }

    /// Makes appends and the head durable (fsync; head written atomically).
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if self.unsynced {
            if let (Some(file), Some(segment)) = (&self.tail, self.segments.back()) {
                file.sync_data().map_err(io_err(&segment.path, "syncing"))?;
            }
            self.unsynced = false;
        }
        if self.head != self.head_on_disk {
            let path = self.dir.join(HEAD_FILE);
            edgeshare_shared::secret::write_atomic(
                &path,
                format!("{}\n", self.head).as_bytes(),
                0o600,
            )
            .map_err(io_err(&path, "writing"))?;
            self.head_on_disk = self.head;
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "syncing the directory"))
}

/// Reads a segment: its index of entries after `head`, the end of its last good line, the
/// number of corrupt lines before and after that, and the highest seq seen.
fn scan(path: &Path, head: u64) -> Result<(Segment, u64, (u64, u64), u64), SpoolError> {
    let file = File::open(path).map_err(io_err(path, "opening"))?;
    let len = file.metadata().map_err(io_err(path, "reading size"))?.len();
    let mut reader = BufReader::new(file);
    let mut index = VecDeque::new();
    let mut sensors = 0;
    let (mut offset, mut good_end, mut corrupt, mut corrupt_since_good, mut max_seq) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(io_err(path, "reading"))? as u64;
        if n == 0 {
            break;
        }
        let whole = line.last() == Some(&b'\n');
        match decode_line(line.strip_suffix(b"\n").unwrap_or(&line)).filter(|_| whole) {
            Some(entry) => {
                max_seq = max_seq.max(entry.seq);
                if entry.seq > head {
                    index.push_back((entry.seq, offset));
                    if entry.kind == Kind::Sensor {
                        sensors += 1;
                    }
                }
                corrupt += corrupt_since_good;
                corrupt_since_good = 0;
                good_end = offset + n;
            }
            None => corrupt_since_good += 1,
        }
        offset += n;
    }
    let segment = Segment {
        path: path.to_owned(),
        bytes: len,
        index,
        sensors,
    };
    Ok((segment, good_end, (corrupt, corrupt_since_good), max_seq))
}

/// Every good entry of a segment after `head`.
fn read_entries(path: &Path, head: u64) -> Result<Vec<Entry>, SpoolError> {
    let text = std::fs::read(path).map_err(io_err(path, "reading"))?;
    Ok(text
        .split(|b| *b == b'\n')
        .filter_map(decode_line)
        .filter(|e| e.seq > head)
        .collect())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A sensor reading `{"n": n}` of device d1.
    pub(crate) fn reading(n: u64) -> Reading {
        let mut data = serde_json::Map::new();
        data.insert("n".into(), n.into());
        Reading {
            device_id: "d1".into(),
            timestamp: time::macros::datetime!(2026-11-21 12:00:00 UTC),
            data,
        }
    }

    fn entry(seq: u64, kind: Kind) -> Entry {
        Entry {
            seq,
            kind,
            reading: reading(seq),
        }
    }

    /// A spool in `dir` with room to spare (1 MiB) holding `entries`, and its limits, to open
    /// it again with.
    fn spool_holding(dir: &Path, entries: &[Entry]) -> (DiskSpool, SpoolLimits) {
        let limits = SpoolLimits::with_max_bytes(1 << 20);
        let (mut spool, _) = DiskSpool::open(dir, limits).unwrap();
        spool.append(entries).unwrap();
        (spool, limits)
    }

    fn seqs(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.seq).collect()
    }

    fn line_len() -> u64 {
        encode_line(&entry(1, Kind::Sensor)).len() as u64
    }

    #[test]
    fn lines_round_trip_and_damage_is_seen() {
        let e = entry(7, Kind::Usage);
        let line = encode_line(&e);
        assert_eq!(decode_line(&line[..line.len() - 1]), Some(e));
        let mut flipped = line.clone();
        let at = flipped.len() - 5;
        flipped[at] ^= 1;
        assert_eq!(decode_line(&flipped[..flipped.len() - 1]), None);
        assert_eq!(decode_line(&line[..line.len() / 2]), None);
        assert_eq!(decode_line(&[0u8; 40]), None);
    }

    #[test]
    fn entries_come_back_in_order_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let limits = SpoolLimits {
            max_bytes: 1 << 20,
            segment_bytes: line_len() * 3,
        };
        let (mut spool, rec) = DiskSpool::open(dir.path(), limits).unwrap();
        assert_eq!(rec, Recovered::default());
        let batch: Vec<Entry> = (1..=10).map(|s| entry(s, Kind::Sensor)).collect();
        spool.append(&batch).unwrap();
        spool.sync().unwrap();
        assert_eq!(
            seqs(&spool.read_from(0, 100).unwrap()),
            (1..=10).collect::<Vec<_>>()
        );
        assert_eq!(seqs(&spool.read_from(5, 3).unwrap()), vec![5, 6, 7]);
        spool.confirm_through(4).unwrap();
        spool.sync().unwrap();
        assert_eq!(spool.len(), 6);
        drop(spool);

        let (spool, rec) = DiskSpool::open(dir.path(), limits).unwrap();
        assert_eq!(rec.entries, 6);
        assert_eq!(spool.last_seq(), 10);
        assert_eq!(
            seqs(&spool.read_from(0, 100).unwrap()),
            (5..=10).collect::<Vec<_>>()
        );
        // Segments of three: the one with 1-3 is gone; 4-6 stays for 5 and 6.
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 3 + 1, "three segments and the head file");
    }

    #[test]
    fn a_torn_tail_is_cut_at_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, limits) =
            spool_holding(dir.path(), &[entry(1, Kind::Sensor), entry(2, Kind::Usage)]);
        spool.sync().unwrap();
        drop(spool);
        let path = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with(".jsonl"))
            .unwrap();
        let whole = std::fs::read(&path).unwrap();
        let first_len = encode_line(&entry(1, Kind::Sensor)).len();
        for cut in first_len..whole.len() {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let (mut spool, rec) = DiskSpool::open(dir.path(), limits).unwrap();
            assert_eq!(rec.cut_bytes, (cut - first_len) as u64, "cut at {cut}");
            assert_eq!(seqs(&spool.read_from(0, 10).unwrap()), vec![1]);
            // Appending after the cut gives whole lines again.
            spool.append(&[entry(3, Kind::Sensor)]).unwrap();
            spool.sync().unwrap();
            drop(spool);
            let (spool, _) = DiskSpool::open(dir.path(), limits).unwrap();
            assert_eq!(seqs(&spool.read_from(0, 10).unwrap()), vec![1, 3]);
        }
    }

    #[test]
    fn when_full_the_oldest_sensor_samples_go_and_usage_stays() {
        let dir = tempfile::tempdir().unwrap();
        // Seqs of two digits throughout, so that lines of one kind have one size.
        let size = |seq, kind| encode_line(&entry(seq, kind)).len() as u64;
        // Room for exactly entries 10 (usage) to 19 (sensors); segments of two lines.
        let limits = SpoolLimits {
            max_bytes: size(10, Kind::Usage) + 9 * size(11, Kind::Sensor),
            segment_bytes: size(10, Kind::Usage) + size(11, Kind::Sensor),
        };
        let (mut spool, _) = DiskSpool::open(dir.path(), limits).unwrap();
        spool.append(&[entry(10, Kind::Usage)]).unwrap();
        let sensors: Vec<Entry> = (11..=19).map(|s| entry(s, Kind::Sensor)).collect();
        assert_eq!(spool.append(&sensors).unwrap().evicted, 0);
        // One more: the oldest segment (10, 11) loses its sensor sample, usage 10 stays.
        let out = spool.append(&[entry(20, Kind::Sensor)]).unwrap();
        assert_eq!(out.evicted, 1);
        let mut expected = vec![10];
        expected.extend(12..=20);
        assert_eq!(seqs(&spool.read_from(0, 100).unwrap()), expected);
        // Usage fills it: sensors go oldest first, usage is never dropped.
        let usage: Vec<Entry> = (21..=30).map(|s| entry(s, Kind::Usage)).collect();
        let out = spool.append(&usage).unwrap();
        assert_eq!((out.written, out.refused), (10, 0));
        let kept = spool.read_from(0, 100).unwrap();
        assert!(
            kept.iter().all(|e| e.kind == Kind::Usage),
            "{:?}",
            seqs(&kept)
        );
        assert_eq!(kept.len(), 11);
        assert_eq!(spool.dropped(), 10);
        // Only usage left: a sensor sample is refused, a usage message is taken.
        let out = spool
            .append(&[entry(31, Kind::Sensor), entry(32, Kind::Usage)])
            .unwrap();
        assert_eq!((out.written, out.refused), (1, 1));
        assert_eq!(spool.refused(), 1);
        let order = seqs(&spool.read_from(0, 100).unwrap());
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(order, sorted, "still in order");
        assert_eq!(order.len(), 12);
        spool.sync().unwrap();
        drop(spool);
        let (spool, rec) = DiskSpool::open(dir.path(), limits).unwrap();
        assert_eq!(rec.entries, 12);
        assert_eq!(seqs(&spool.read_from(0, 100).unwrap()), order);
    }

    #[test]
    fn bytes_stay_within_the_bound_with_sensors_only() {
        let dir = tempfile::tempdir().unwrap();
        let limits = SpoolLimits::with_max_bytes(64 * 1024);
        let (mut spool, _) = DiskSpool::open(dir.path(), limits).unwrap();
        let mut dropped = 0;
        for s in 1..=5000 {
            dropped += spool.append(&[entry(s, Kind::Sensor)]).unwrap().evicted;
            assert!(spool.bytes() <= limits.max_bytes);
        }
        let left = spool.read_from(0, 10_000).unwrap();
        assert_eq!(left.len() as u64 + dropped, 5000);
        assert_eq!(left.last().unwrap().seq, 5000, "the newest are kept");
        assert_eq!(
            seqs(&left),
            ((5000 - left.len() as u64 + 1)..=5000).collect::<Vec<_>>(),
            "the oldest went first"
        );
    }

    #[test]
    fn confirming_everything_leaves_no_segment_and_seq_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, limits) = spool_holding(
            dir.path(),
            &[entry(1, Kind::Sensor), entry(2, Kind::Sensor)],
        );
        spool.confirm_through(2).unwrap();
        spool.sync().unwrap();
        assert!(spool.is_empty());
        assert_eq!(spool.bytes(), 0);
        drop(spool);
        let (spool, rec) = DiskSpool::open(dir.path(), limits).unwrap();
        assert_eq!(rec.entries, 0);
        assert_eq!(spool.last_seq(), 2, "seqs are never reused");
    }
}
