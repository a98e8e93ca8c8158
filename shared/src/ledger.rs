//! The usage ledger: durable, append-only, sequence-numbered usage records, written by the
//! gateway and read by the agent, which reports them to the backend.
//!
//! Each record carries a session's **cumulative** totals, so the ledger heals itself: a lost,
//! skipped or compacted-away record costs nothing, because the next one carries the totals.
//! That is also what makes compaction safe: keeping only each session's latest record never
//! loses usage.
//!
//! On disk: a directory of segments `usage-<first seq, 20 digits>.jsonl`, one record per line
//! as JSON with a checksum as its last field (`"sum"`, over the line without it), so a torn or
//! corrupt line is detected. The writer appends a whole batch with one `write` and one `fsync`
//! (the gateway writes every few seconds; an SD card wears with every sync), rotates segments
//! at [`LedgerLimits::segment_bytes`], and keeps the directory under
//! [`LedgerLimits::max_bytes`] by compacting the closed segments (temp file, fsync, rename,
//! fsync of the directory). One writer at a time holds an `flock` on `writer.lock`; readers
//! take no lock and may run as another user with group read access (directory 0750, files
//! 0640, given to the readers' group by [`LedgerWriter::share_with_group`]).
//!
//! Records in segment *i* have sequence numbers below the first of segment *i + 1*. A crash in
//! the middle of a compaction can leave a record in two files (same seq); both readers and the
//! writer drop such duplicates, and the next compaction removes them.
//!
//! Sequence numbers never go back, even when the card loses a write: a reader's cursor is a
//! sequence number, and a number handed out twice would hide the second record from it. The
//! writer keeps a high-water mark in `seq.hwm` (temp file, fsync, rename): a bound on every
//! sequence number it may have handed out, reserved [`SEQ_RESERVE`] numbers ahead so that it is
//! rewritten once per thousand records, not with every batch. A reopened writer goes on above
//! both that mark and every record and segment name it finds, so after a restart the sequence
//! has a gap (harmless: readers never expect consecutive numbers, compaction makes gaps too).
//! Should the mark be lost as well, [`LedgerReader::read_since`] notices the sequence going
//! back and hands the whole ledger out again.
//!
//! No reporting logic lives here (the agent's `usage` module does that), and nothing here
//! talks to the network.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::code::{redact, redact_session};
use crate::paths::{Daemon, StandardPaths};

/// Rotate to a new segment once the current one is this large.
pub const DEFAULT_SEGMENT_BYTES: u64 = 1 << 20;
/// Keep the whole ledger under this many bytes.
pub const DEFAULT_MAX_BYTES: u64 = 16 << 20;
/// Keep an ended session's last record this long (the agent may be offline for days).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

const SEGMENT_PREFIX: &str = "usage-";
const SEGMENT_SUFFIX: &str = ".jsonl";
const LOCK_FILE: &str = "writer.lock";
const COMPACT_TMP: &str = ".compact.tmp";
const HWM_FILE: &str = "seq.hwm";
const HWM_TMP: &str = ".seq.hwm.tmp";
/// How far ahead of the records the high-water mark is put: one rewrite of it (two fsyncs)
/// per this many records, and at most this big a gap in the sequence after a restart.
pub const SEQ_RESERVE: u64 = 1000;
/// `,"sum":"` + 8 hex digits + `"}`.
const SUM_FIELD: &str = ",\"sum\":\"";
const SUM_SUFFIX_LEN: usize = SUM_FIELD.len() + 8 + 2;
/// Directory and file modes: the agent reads the ledger through the group.
const DIR_MODE: u32 = 0o750;
const FILE_MODE: u32 = 0o640;
/// How often a reader starts over when a compaction replaced files under it.
const READ_ATTEMPTS: usize = 5;

/// The ledger directory by default: `ledger` in the gateway's state directory.
pub fn default_dir() -> PathBuf {
    StandardPaths::for_current_user(Daemon::Gateway)
        .state_dir
        .join("ledger")
}

/// One session's usage at one moment, as the gateway recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// Strictly increasing over the whole ledger, from 1, never reused.
    pub seq: u64,
    /// Unix milliseconds when the gateway recorded it.
    pub at_ms: u64,
    /// Unique id of a session, e.g. `ABCD2345-1732190000000` (code and start in ms).
    pub session: String,
    /// The access code (the backend counts usage per code).
    pub code: String,
    /// Cumulative billable bytes client → WAN since the session started.
    pub up: u64,
    /// Cumulative billable bytes WAN → client since the session started.
    pub down: u64,
    /// The reason on the session's last record ("quota", "expired", "kicked", …).
    pub ended: Option<String>,
    /// The backend account id of the consumer who signed in on the portal for this session,
    /// if one did: the agent names it in the session's usage reports (`consumerId`). Fixed
    /// for a session (the gateway sets it when the session starts). Left out of the line
    /// when there is none, so a record without it is written, and checksummed, byte for
    /// byte as before the field existed, and older ledgers read as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
}

impl UsageRecord {
    /// Billable bytes in both directions: what the backend's `bytes` counts.
    pub fn total(&self) -> u64 {
        self.up.saturating_add(self.down)
    }
}

/// What the gateway knows of a session now; [`LedgerWriter::append`] turns it into a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageUpdate {
    pub session: String,
    pub code: String,
    /// Cumulative, as in [`UsageRecord::up`].
    pub up: u64,
    /// Cumulative, as in [`UsageRecord::down`].
    pub down: u64,
    /// `Some(reason)` when the session ends with this update.
    pub ended: Option<String>,
    /// As in [`UsageRecord::consumer`].
    pub consumer: Option<String>,
}

/// Size bounds of a ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerLimits {
    /// Rotate to a new segment once the current one has this many bytes.
    pub segment_bytes: u64,
    /// Compact when the segments together pass this many bytes.
    pub max_bytes: u64,
    /// Drop an ended session's last record this long after it ended.
    pub retention: Duration,
}

impl Default for LedgerLimits {
    fn default() -> Self {
        LedgerLimits {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            max_bytes: DEFAULT_MAX_BYTES,
            retention: DEFAULT_RETENTION,
        }
    }
}

/// A failed ledger operation; each says which file and what to do. Sessions and codes in it
/// are redacted (codes are secrets).
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger limits: {0}")]
    Limits(String),
    #[error("cannot create the ledger directory {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the ledger directory {} does not exist (is the gateway running and the path right?)", path.display())]
    Missing { path: PathBuf },
    #[error(
        "the ledger {} is already open for writing by another process (it holds {}); stop the other edgeshare-gateway first",
        dir.display(), dir.join(LOCK_FILE).display()
    )]
    Locked { dir: PathBuf },
    #[error("cannot lock the ledger {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot let group {gid} read the ledger at {}: {source} (the writer needs CAP_CHOWN, or to own the file)",
        path.display()
    )]
    Share {
        path: PathBuf,
        gid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the ledger at {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the ledger at {}: {source}; nothing of this batch was recorded", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot compact the ledger {}: {source}; the records are safe, but the ledger may grow past its limit (check free space and permissions)",
        dir.display()
    )]
    Compact {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the ledger {} kept changing while it was read ({READ_ATTEMPTS} attempts); try again", dir.display())]
    Unstable { dir: PathBuf },
    #[error(
        "usage of session {session} went back (up {up} after {prev_up}, down {down} after {prev_down}); totals are cumulative, so the batch was refused"
    )]
    WentBack {
        session: String,
        up: u64,
        down: u64,
        prev_up: u64,
        prev_down: u64,
    },
    #[error("session {session} already ended ({reason}); the batch was refused")]
    AlreadyEnded { session: String, reason: String },
    #[error("session {session} is of code {known}, not {given}; the batch was refused")]
    CodeChanged {
        session: String,
        known: String,
        given: String,
    },
}

/// What opening a ledger found and repaired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes cut off the tail of the last segment (a write torn by a crash).
    pub cut_bytes: u64,
    /// Complete lines that failed their checksum or did not parse; skipped.
    pub corrupt_lines: u64,
}

/// Counters of what the writer did since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    pub batches: u64,
    pub records: u64,
    pub bytes: u64,
    /// fsync calls of files and of the directory, compaction included.
    pub fsyncs: u64,
    pub rotations: u64,
    pub compactions: u64,
}

/// Encodes a record as one line: its JSON with `"sum"` (the first 4 bytes of the SHA-256 of
/// the JSON without it, in hex) as the last field, and a newline.
fn encode(record: &UsageRecord) -> Vec<u8> {
    // Serialising strings and integers into memory cannot fail.
    let mut json = serde_json::to_vec(record).unwrap_or_default();
    let sum = checksum(&json);
    json.pop(); // the closing brace
    json.extend_from_slice(SUM_FIELD.as_bytes());
    json.extend_from_slice(sum.as_bytes());
    json.extend_from_slice(b"\"}\n");
    json
}

fn checksum(json: &[u8]) -> String {
    let digest = Sha256::digest(json);
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes one line (without its newline); `None` if it is torn or corrupt.
fn decode(line: &[u8]) -> Option<UsageRecord> {
    let split = line.len().checked_sub(SUM_SUFFIX_LEN)?;
    let (head, tail) = line.split_at(split);
    let sum = tail
        .strip_prefix(SUM_FIELD.as_bytes())?
        .strip_suffix(b"\"}")?;
    let mut json = head.to_vec();
    json.push(b'}');
    if checksum(&json).as_bytes() != sum {
        return None;
    }
    serde_json::from_slice(&json).ok()
}

/// The lines of one segment's contents.
#[derive(Debug, Default)]
struct Scan {
    records: Vec<UsageRecord>,
    /// Offset just past the last good line.
    good_end: usize,
    /// Offsets of complete lines that failed to decode, before `good_end`.
    corrupt: Vec<usize>,
    /// Complete but bad lines after the last good one (a corrupt tail).
    corrupt_tail: u64,
}

fn scan(bytes: &[u8]) -> Scan {
    let mut out = Scan::default();
    let mut start = 0;
    let mut pending_bad = Vec::new();
    while let Some(len) = bytes[start..].iter().position(|&b| b == b'\n') {
        let line = &bytes[start..start + len];
        match decode(line) {
            Some(record) => {
                out.corrupt.append(&mut pending_bad);
                out.records.push(record);
                out.good_end = start + len + 1;
            }
            None => pending_bad.push(start),
        }
        start += len + 1;
    }
    out.corrupt_tail = pending_bad.len() as u64;
    out
}

fn segment_name(first_seq: u64) -> String {
    format!("{SEGMENT_PREFIX}{first_seq:020}{SEGMENT_SUFFIX}")
}

/// The first sequence number of a segment named as [`segment_name`] names it, and only then:
/// a stray file such as `usage-1.jsonl` is not a segment (it would be listed under a name the
/// reader then cannot open, and every read would fail).
fn parse_segment_name(name: &str) -> Option<u64> {
    let first = name
        .strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?
        .parse()
        .ok()?;
    (segment_name(first) == name).then_some(first)
}

/// The segments in `dir`, by first sequence number.
fn list_segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut firsts = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(first) = entry.file_name().to_str().and_then(parse_segment_name) {
            firsts.push(first);
        }
    }
    firsts.sort_unstable();
    Ok(firsts)
}

fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    first_seq: u64,
    bytes: u64,
}

/// The one writer of a ledger (the gateway).
#[derive(Debug)]
pub struct LedgerWriter {
    dir: PathBuf,
    limits: LedgerLimits,
    /// Held for the writer's life: the flock goes with it.
    _lock: File,
    /// Oldest first; the last one is appended to.
    segments: Vec<Segment>,
    /// Append handle of the last segment, once opened.
    active: Option<File>,
    /// The highest sequence number in the ledger.
    last_seq: u64,
    /// New numbers start above this: the high-water mark found at open (see `seq.hwm`), as
    /// numbers up to it may have been handed out in records since lost.
    resume_after: u64,
    /// The high-water mark on disk: no record gets a number above it before it is raised.
    reserved: u64,
    /// Each session's latest record.
    latest: BTreeMap<String, UsageRecord>,
    recovery: Recovery,
    stats: WriterStats,
    /// The group that may read the ledger (the agent's), once shared.
    reader_group: Option<u32>,
}

impl LedgerWriter {
    /// Opens (creating it, mode 0750) the ledger in `dir` for writing: takes the writer lock,
    /// cuts off a tail torn by a crash, and loads the last sequence number and every session's
    /// latest record.
    pub fn open(dir: &Path, limits: LedgerLimits) -> Result<LedgerWriter, LedgerError> {
        if limits.segment_bytes == 0 || limits.max_bytes < 2 * limits.segment_bytes {
            return Err(LedgerError::Limits(format!(
                "max_bytes ({}) must be at least twice segment_bytes ({}), and segment_bytes above 0",
                limits.max_bytes, limits.segment_bytes
            )));
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(|source| LedgerError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        let lock = lock_writer(dir)?;
        let read_err = |path: &Path| {
            let path = path.to_owned();
            move |source| LedgerError::Read { path, source }
        };
        // A compaction that crashed before its rename left only its temp file.
        match std::fs::remove_file(dir.join(COMPACT_TMP)) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                return Err(read_err(&dir.join(COMPACT_TMP))(e));
            }
            _ => {}
        }
        let mut writer = LedgerWriter {
            dir: dir.to_owned(),
            limits,
            _lock: lock,
            segments: Vec::new(),
            active: None,
            last_seq: 0,
            resume_after: 0,
            reserved: read_hwm(dir),
            latest: BTreeMap::new(),
            recovery: Recovery::default(),
            stats: WriterStats::default(),
            reader_group: None,
        };
        let firsts = list_segments(dir).map_err(read_err(dir))?;
        let count = firsts.len();
        for (i, first_seq) in firsts.into_iter().enumerate() {
            // A segment the card emptied still says by its name where its numbers started.
            writer.resume_after = writer.resume_after.max(first_seq.saturating_sub(1));
            let path = dir.join(segment_name(first_seq));
            let bytes = read_file(&path).map_err(read_err(&path))?;
            let scan = scan(&bytes);
            for offset in &scan.corrupt {
                tracing::warn!(file = %path.display(), offset, "ledger line failed its checksum; skipped");
            }
            writer.recovery.corrupt_lines += scan.corrupt.len() as u64;
            let mut size = bytes.len() as u64;
            let is_last = i + 1 == count;
            if is_last && scan.good_end < bytes.len() {
                // A crash in the middle of an append: the batch was never confirmed, so cutting
                // it off loses nothing that was promised.
                let cut = (bytes.len() - scan.good_end) as u64;
                tracing::warn!(
                    file = %path.display(),
                    cut_bytes = cut,
                    corrupt_lines = scan.corrupt_tail,
                    "ledger tail torn by a crash; cut off"
                );
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(read_err(&path))?;
                file.set_len(scan.good_end as u64)
                    .and_then(|()| file.sync_all())
                    .map_err(read_err(&path))?;
                writer.recovery.cut_bytes += cut;
                writer.recovery.corrupt_lines += scan.corrupt_tail;
                size = scan.good_end as u64;
            } else if scan.good_end < bytes.len() {
                tracing::warn!(file = %path.display(), lines = scan.corrupt_tail, "corrupt ledger lines at the end of a closed segment; skipped");
                writer.recovery.corrupt_lines += scan.corrupt_tail;
            }
            for record in scan.records {
                writer.last_seq = writer.last_seq.max(record.seq);
                writer.remember(record);
            }
            writer.segments.push(Segment {
                first_seq,
                bytes: size,
            });
        }
        let found = writer.last_seq;
        writer.resume_after = writer.resume_after.max(writer.reserved);
        if found < writer.resume_after.saturating_sub(SEQ_RESERVE) {
            // Below even the mark's reserve: records that were written are gone.
            tracing::warn!(
                dir = %dir.display(),
                found_seq = found,
                resume_after = writer.resume_after,
                "the ledger lost records (an emptied or missing segment?); numbering goes on above its high-water mark, and the usage of the lost records is carried by the sessions' next records"
            );
        }
        Ok(writer)
    }

    fn remember(&mut self, record: UsageRecord) {
        match self.latest.get(&record.session) {
            Some(known) if known.seq >= record.seq => {}
            _ => {
                self.latest.insert(record.session.clone(), record);
            }
        }
    }

    /// The ledger's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Lets group `gid` (the agent's) read the ledger: the directory becomes 0750 and every
    /// file in it 0640, all of group `gid`, and so does every file made from now on.
    ///
    /// Each file is given to the group explicitly instead of relying on a set-group-ID
    /// directory and the umask: under systemd the gateway runs with `UMask=0077` (files would
    /// be 0600) and `RestrictSUIDSGID=yes` (a set-group-ID bit is refused), both worth
    /// keeping. Files left 0600 or of another group by earlier versions are mended here too,
    /// and a set-group-ID bit they left on the directory is cleared.
    pub fn share_with_group(&mut self, gid: u32) -> Result<(), LedgerError> {
        use std::os::unix::fs::PermissionsExt as _;
        let share_err = |path: &Path| {
            let path = path.to_owned();
            move |source| LedgerError::Share { path, gid, source }
        };
        std::os::unix::fs::chown(&self.dir, None, Some(gid))
            .and_then(|()| {
                std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(DIR_MODE))
            })
            .map_err(share_err(&self.dir))?;
        for entry in std::fs::read_dir(&self.dir).map_err(share_err(&self.dir))? {
            let path = entry.map_err(share_err(&self.dir))?.path();
            if path.is_file() {
                std::os::unix::fs::chown(&path, None, Some(gid))
                    .and_then(|()| {
                        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(FILE_MODE))
                    })
                    .map_err(share_err(&path))?;
            }
        }
        self.reader_group = Some(gid);
        Ok(())
    }

    /// Gives a file the writer has just made to the readers' group, if the ledger is shared.
    fn grant(&self, file: &File) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        if let Some(gid) = self.reader_group {
            std::os::unix::fs::fchown(file, None, Some(gid))?;
            file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
        }
        Ok(())
    }

    /// The latest record of `session`, if the ledger still holds one.
    pub fn latest(&self, session: &str) -> Option<&UsageRecord> {
        self.latest.get(session)
    }

    /// Every session's latest record, by session id: what the gateway resumes from after a
    /// restart.
    pub fn sessions(&self) -> impl Iterator<Item = &UsageRecord> {
        self.latest.values()
    }

    /// The highest sequence number in the ledger (0 for an empty ledger). After a reopen the
    /// next record's number is above the high-water mark, which may be higher still.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// What opening the ledger repaired.
    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    pub fn stats(&self) -> WriterStats {
        self.stats
    }

    /// Bytes the segments take on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Records `updates` with the current time. See [`LedgerWriter::append_at`].
    pub fn append(&mut self, updates: &[UsageUpdate]) -> Result<Vec<UsageRecord>, LedgerError> {
        self.append_at(now_ms(), updates)
    }

    /// Records `updates` as one batch, stamped `now_ms`: one write and one fsync (plus one of
    /// the directory when a new segment starts). An update that changes nothing (same totals,
    /// not ending) writes nothing. A batch with an update that goes back, changes its code or
    /// follows its session's end is refused whole. Returns the records written.
    pub fn append_at(
        &mut self,
        now_ms: u64,
        updates: &[UsageUpdate],
    ) -> Result<Vec<UsageRecord>, LedgerError> {
        let records = self.plan(now_ms, updates)?;
        if records.is_empty() {
            return Ok(records);
        }
        let mut buf = Vec::with_capacity(records.len() * 160);
        for record in &records {
            buf.extend_from_slice(&encode(record));
        }
        let first_seq = records[0].seq;
        let last = records[records.len() - 1].seq;
        if last > self.reserved {
            self.raise_hwm(last + SEQ_RESERVE)?;
        }
        self.write_batch(first_seq, &buf)?;
        self.stats.batches += 1;
        self.stats.records += records.len() as u64;
        self.stats.bytes += buf.len() as u64;
        self.last_seq = records[records.len() - 1].seq;
        for record in &records {
            self.latest.insert(record.session.clone(), record.clone());
        }
        if self.disk_bytes() > self.limits.max_bytes {
            // The batch is safe on disk: a failed compaction is reported, not returned, so the
            // caller does not record it twice.
            if let Err(err) = self.compact(now_ms) {
                tracing::error!(error = %err, "ledger compaction failed");
            }
        }
        Ok(records)
    }

    /// The records a batch would write, checked against every session's latest record.
    fn plan(&self, now_ms: u64, updates: &[UsageUpdate]) -> Result<Vec<UsageRecord>, LedgerError> {
        let mut records: Vec<UsageRecord> = Vec::new();
        for update in updates {
            let previous = records
                .iter()
                .rev()
                .find(|r| r.session == update.session)
                .or_else(|| self.latest.get(&update.session));
            if let Some(prev) = previous {
                if prev.code != update.code {
                    return Err(LedgerError::CodeChanged {
                        session: redact_session(&update.session),
                        known: redact(&prev.code),
                        given: redact(&update.code),
                    });
                }
                if update.up < prev.up || update.down < prev.down {
                    return Err(LedgerError::WentBack {
                        session: redact_session(&update.session),
                        up: update.up,
                        down: update.down,
                        prev_up: prev.up,
                        prev_down: prev.down,
                    });
                }
                let same = update.up == prev.up && update.down == prev.down;
                if let Some(reason) = &prev.ended {
                    // Telling the ledger again that a session ended is harmless.
                    if same && update.ended.is_some() {
                        continue;
                    }
                    return Err(LedgerError::AlreadyEnded {
                        session: redact_session(&update.session),
                        reason: reason.clone(),
                    });
                }
                if same && update.ended.is_none() {
                    continue;
                }
            }
            records.push(UsageRecord {
                seq: self.last_seq.max(self.resume_after) + records.len() as u64 + 1,
                at_ms: now_ms,
                session: update.session.clone(),
                code: update.code.clone(),
                up: update.up,
                down: update.down,
                ended: update.ended.clone(),
                consumer: update.consumer.clone(),
            });
        }
        Ok(records)
    }

    /// Replaces `path` with `body` as one step: written to `tmp` (in the ledger folder, given
    /// to the readers' group), synced, renamed over `path`, the folder synced (two fsyncs).
    fn replace_file(&self, tmp: &str, path: &Path, body: &[u8]) -> std::io::Result<()> {
        let tmp = self.dir.join(tmp);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        self.grant(&file)?;
        file.write_all(body)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(&self.dir)
    }

    /// Persists `reserved` as the high-water mark before any number up to it is used.
    fn raise_hwm(&mut self, reserved: u64) -> Result<(), LedgerError> {
        let path = self.dir.join(HWM_FILE);
        self.replace_file(HWM_TMP, &path, format!("{reserved}\n").as_bytes())
            .map_err(|source| LedgerError::Write { path, source })?;
        self.stats.fsyncs += 2;
        self.reserved = reserved;
        Ok(())
    }

    /// Appends `buf` to the active segment, or to a new one named `first_seq` if the active
    /// one is full. On failure the segment is cut back to where it was.
    fn write_batch(&mut self, first_seq: u64, buf: &[u8]) -> Result<(), LedgerError> {
        let full = self
            .segments
            .last()
            .is_none_or(|s| s.bytes >= self.limits.segment_bytes);
        let path = if full {
            self.dir.join(segment_name(first_seq))
        } else {
            self.dir.join(segment_name(
                self.segments[self.segments.len() - 1].first_seq,
            ))
        };
        let write_err = |source| LedgerError::Write {
            path: path.clone(),
            source,
        };
        if full {
            let file = OpenOptions::new()
                .append(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(&path)
                .map_err(write_err)?;
            if let Err(err) = self.grant(&file) {
                // Not left behind: the next batch makes this segment again.
                let _ = std::fs::remove_file(&path);
                return Err(write_err(err));
            }
            // The new name must survive a power cut as well as the lines in it.
            sync_dir(&self.dir).map_err(write_err)?;
            self.stats.fsyncs += 1;
            if !self.segments.is_empty() {
                self.stats.rotations += 1;
            }
            self.segments.push(Segment {
                first_seq,
                bytes: 0,
            });
            self.active = Some(file);
        }
        let mut file = match self.active.take() {
            Some(file) => file,
            None => OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(write_err)?,
        };
        let before = self.segments.last().map_or(0, |s| s.bytes);
        if let Err(err) = file.write_all(buf).and_then(|()| file.sync_data()) {
            // Leave no half batch behind for a reader to see; if this fails too, the file is
            // opened again next time, and the next open of the ledger cuts the tail off.
            if file.set_len(before).is_ok() {
                self.active = Some(file);
            }
            return Err(write_err(err));
        }
        self.active = Some(file);
        self.stats.fsyncs += 1;
        if let Some(last) = self.segments.last_mut() {
            last.bytes += buf.len() as u64;
        }
        Ok(())
    }

    /// Rewrites the closed segments (all but the one appended to) into one file that keeps
    /// only each session's latest record, without sessions that ended more than
    /// `retention` before `now_ms`. If that is still over the limit, the sessions that ended
    /// longest ago go too (logged). Crash-safe: temp file, fsync, rename over the oldest
    /// segment, fsync of the directory, then the other closed segments are removed.
    pub fn compact(&mut self, now_ms: u64) -> Result<(), LedgerError> {
        if self.segments.len() < 2 {
            return Ok(());
        }
        let compact_err = |source| LedgerError::Compact {
            dir: self.dir.clone(),
            source,
        };
        let closed: Vec<Segment> = self.segments[..self.segments.len() - 1].to_vec();
        let mut kept: BTreeMap<u64, UsageRecord> = BTreeMap::new();
        for segment in &closed {
            let path = self.dir.join(segment_name(segment.first_seq));
            let bytes = read_file(&path).map_err(compact_err)?;
            for record in scan(&bytes).records {
                let is_latest = self
                    .latest
                    .get(&record.session)
                    .is_some_and(|l| l.seq == record.seq);
                if is_latest {
                    kept.insert(record.seq, record);
                }
            }
        }
        let retention_ms = u64::try_from(self.limits.retention.as_millis()).unwrap_or(u64::MAX);
        let expired =
            |r: &UsageRecord| r.ended.is_some() && r.at_ms.saturating_add(retention_ms) < now_ms;
        let mut dropped: Vec<String> = Vec::new();
        kept.retain(|_, r| {
            let keep = !expired(r);
            if !keep {
                dropped.push(r.session.clone());
            }
            keep
        });
        // Aim well under the limit so that compaction does not run again at once.
        let active_bytes = self.segments.last().map_or(0, |s| s.bytes);
        let target = (self.limits.max_bytes * 3 / 4).saturating_sub(active_bytes);
        let mut lines: BTreeMap<u64, Vec<u8>> =
            kept.iter().map(|(seq, r)| (*seq, encode(r))).collect();
        let mut size: u64 = lines.values().map(|l| l.len() as u64).sum();
        if size > target {
            let mut ended: Vec<(u64, u64)> = kept
                .values()
                .filter(|r| r.ended.is_some())
                .map(|r| (r.at_ms, r.seq))
                .collect();
            ended.sort_unstable();
            let mut forced = 0u64;
            for (_, seq) in ended {
                if size <= target {
                    break;
                }
                if let (Some(line), Some(record)) = (lines.remove(&seq), kept.remove(&seq)) {
                    size -= line.len() as u64;
                    dropped.push(record.session);
                    forced += 1;
                }
            }
            if forced > 0 {
                tracing::warn!(
                    dir = %self.dir.display(),
                    sessions = forced,
                    "ledger over its size limit: dropped the ended sessions that ended longest ago before their retention ran out (raise the ledger's max_bytes if the agent cannot keep up)"
                );
            }
        }
        let target_path = self.dir.join(segment_name(closed[0].first_seq));
        if lines.is_empty() {
            for segment in &closed {
                remove_segment(&self.dir, segment.first_seq).map_err(compact_err)?;
            }
        } else {
            let body: Vec<u8> = lines.values().flatten().copied().collect();
            self.replace_file(COMPACT_TMP, &target_path, &body)
                .map_err(compact_err)?;
            self.stats.fsyncs += 2;
            for segment in &closed[1..] {
                remove_segment(&self.dir, segment.first_seq).map_err(compact_err)?;
            }
        }
        sync_dir(&self.dir).map_err(compact_err)?;
        self.stats.fsyncs += 1;
        self.stats.compactions += 1;
        for session in &dropped {
            self.latest.remove(session);
        }
        let active = self.segments[self.segments.len() - 1];
        self.segments = if lines.is_empty() {
            vec![active]
        } else {
            vec![
                Segment {
                    first_seq: closed[0].first_seq,
                    bytes: size,
                },
                active,
            ]
        };
        tracing::debug!(
            dir = %self.dir.display(),
            kept = lines.len(),
            dropped = dropped.len(),
            bytes = self.disk_bytes(),
            "ledger compacted"
        );
        Ok(())
    }
}

/// The high-water mark in `dir`, 0 if there is none. A damaged one is only warned about: the
/// records and segment names still bound the numbers, and the reader catches the rest.
fn read_hwm(dir: &Path) -> u64 {
    let path = dir.join(HWM_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| {
            tracing::warn!(file = %path.display(), "the ledger's high-water mark is damaged; numbering goes on from the records found");
            0
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => 0,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read the ledger's high-water mark; numbering goes on from the records found");
            0
        }
    }
}

fn remove_segment(dir: &Path, first_seq: u64) -> std::io::Result<()> {
    match std::fs::remove_file(dir.join(segment_name(first_seq))) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn lock_writer(dir: &Path) -> Result<File, LedgerError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(&path)
        .map_err(|source| LedgerError::Lock {
            path: path.clone(),
            source,
        })?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(LedgerError::Locked {
            dir: dir.to_owned(),
        }),
        Err(e) => Err(LedgerError::Lock {
            path,
            source: e.into(),
        }),
    }
}

/// What [`LedgerReader::read_since`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadSince {
    /// The records after the cursor, in order; if the sequence went back, every record.
    pub records: Vec<UsageRecord>,
    /// Set when the ledger's numbers went back below the cursor.
    pub went_back: Option<WentBack>,
}

/// The ledger's sequence went back under a reader: records were lost (an SD card that dropped
/// a write) and numbers handed out again. Usage is cumulative per session, so reading the
/// whole ledger again, as [`LedgerReader::read_since`] then does, loses nothing and bills
/// nothing twice; the cursor must be set back (to 0) before the records are taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WentBack {
    /// The cursor the reader was given.
    pub cursor: u64,
    /// The highest sequence number the ledger holds now.
    pub ledger_seq: u64,
}

/// A read-only view of a ledger (the agent). It takes no lock: it works while the writer
/// appends and compacts, and needs only read access (the group's).
#[derive(Debug)]
pub struct LedgerReader {
    dir: PathBuf,
    /// Corrupt lines already warned about (segment, offset), so a poll does not repeat them.
    warned: HashSet<(u64, usize)>,
    /// The last record [`LedgerReader::read_since`] handed out (seq, time, session): if the
    /// ledger later holds another record under that number, the numbers were reused.
    last_read: Option<(u64, u64, String)>,
}

impl LedgerReader {
    pub fn open(dir: &Path) -> Result<LedgerReader, LedgerError> {
        if !dir.is_dir() {
            return Err(LedgerError::Missing {
                path: dir.to_owned(),
            });
        }
        Ok(LedgerReader {
            dir: dir.to_owned(),
            warned: HashSet::new(),
            last_read: None,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every record with a sequence number above `after`, in order. Corrupt lines are skipped
    /// (with a warning), and a line still being written is left for the next read.
    pub fn read_after(&mut self, after: u64) -> Result<Vec<UsageRecord>, LedgerError> {
        self.read_segments(|firsts| {
            // Segment i holds only seqs below the first of segment i + 1: skip those entirely
            // at or below `after`.
            let skip = firsts
                .iter()
                .skip(1)
                .take_while(|&&next| next <= after.saturating_add(1))
                .count();
            firsts[skip..].to_vec()
        })
        .map(|mut records| {
            records.retain(|r| r.seq > after);
            records
        })
    }

    /// Every record after `cursor`, like [`LedgerReader::read_after`], but it also notices the
    /// sequence going back under the cursor: the ledger ends below it, or the record this
    /// reader last handed out was replaced by another under the same number. Then it warns and
    /// returns every record in the ledger, with [`ReadSince::went_back`] set: the caller sets
    /// its cursor back to 0 and takes them in (cumulative totals make that safe).
    pub fn read_since(&mut self, cursor: u64) -> Result<ReadSince, LedgerError> {
        // Also the segment holding `cursor` itself: its record is checked, not returned.
        let mut records = self.read_segments(|firsts| {
            let skip = firsts
                .iter()
                .skip(1)
                .take_while(|&&next| next <= cursor)
                .count();
            firsts[skip..].to_vec()
        })?;
        let ledger_seq = match records.last() {
            Some(last) => last.seq,
            None => self.last_seq()?,
        };
        let replaced = self
            .last_read
            .as_ref()
            .is_some_and(|(seq, at_ms, session)| {
                *seq == cursor
                    && records
                        .iter()
                        .any(|r| r.seq == *seq && (r.at_ms != *at_ms || r.session != *session))
            });
        let went_back =
            (ledger_seq < cursor || replaced).then_some(WentBack { cursor, ledger_seq });
        if let Some(back) = went_back {
            tracing::warn!(
                ledger = %self.dir.display(),
                cursor = back.cursor,
                ledger_seq = back.ledger_seq,
                "the ledger's sequence went back under the reader (records lost, numbers reused); reading it again from the start"
            );
            records = self.read_after(0)?;
        } else {
            records.retain(|r| r.seq > cursor);
        }
        if let Some(last) = records.last() {
            self.last_read = Some((last.seq, last.at_ms, last.session.clone()));
        }
        Ok(ReadSince { records, went_back })
    }

    /// The highest sequence number in the ledger (0 if it holds none). A value below what a
    /// reader has already seen means the ledger lost its tail (a power cut before the writer's
    /// fsync), and the reader should read it again from the start.
    pub fn last_seq(&mut self) -> Result<u64, LedgerError> {
        let firsts = list_segments(&self.dir).map_err(|source| LedgerError::Read {
            path: self.dir.clone(),
            source,
        })?;
        for n in 1..=firsts.len() {
            let records = self.read_segments(|all| all[all.len().saturating_sub(n)..].to_vec())?;
            if let Some(last) = records.last() {
                return Ok(last.seq);
            }
        }
        Ok(0)
    }

    /// Reads the segments `pick` chooses from the listing, starting over if a compaction
    /// removed one under it. Sorted by seq, duplicates dropped.
    fn read_segments(
        &mut self,
        pick: impl Fn(&[u64]) -> Vec<u64>,
    ) -> Result<Vec<UsageRecord>, LedgerError> {
        'attempt: for _ in 0..READ_ATTEMPTS {
            let firsts = list_segments(&self.dir).map_err(|source| LedgerError::Read {
                path: self.dir.clone(),
                source,
            })?;
            let mut records = Vec::new();
            for first in pick(&firsts) {
                let path = self.dir.join(segment_name(first));
                let bytes = match read_file(&path) {
                    Ok(bytes) => bytes,
                    // Compacted away since the listing: its records moved; list again.
                    Err(e) if e.kind() == ErrorKind::NotFound => continue 'attempt,
                    Err(source) => return Err(LedgerError::Read { path, source }),
                };
                let scan = scan(&bytes);
                for offset in scan.corrupt {
                    if self.warned.insert((first, offset)) {
                        tracing::warn!(file = %path.display(), offset, "ledger line failed its checksum; skipped");
                    }
                }
                records.extend(scan.records);
            }
            records.sort_unstable_by_key(|r| r.seq);
            records.dedup_by_key(|r| r.seq);
            return Ok(records);
        }
        Err(LedgerError::Unstable {
            dir: self.dir.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    const DAY_MS: u64 = 24 * 3600 * 1000;

    fn update(session: &str, up: u64, down: u64) -> UsageUpdate {
        UsageUpdate {
            session: session.to_owned(),
            code: session[..8].to_owned(),
            up,
            down,
            ended: None,
            consumer: None,
        }
    }

    fn ended(session: &str, up: u64, down: u64, reason: &str) -> UsageUpdate {
        UsageUpdate {
            ended: Some(reason.to_owned()),
            ..update(session, up, down)
        }
    }

    fn small(segment_bytes: u64, max_bytes: u64) -> LedgerLimits {
        LedgerLimits {
            segment_bytes,
            max_bytes,
            retention: Duration::from_millis(30 * DAY_MS),
        }
    }

    fn all(dir: &Path) -> Vec<UsageRecord> {
        LedgerReader::open(dir).unwrap().read_after(0).unwrap()
    }

    fn segment_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(SEGMENT_PREFIX))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn lines_are_json_with_a_checksum_and_round_trip() {
        let record = UsageRecord {
            seq: 7,
            at_ms: 1_732_190_000_123,
            session: "ABCD2345-1732190000000".into(),
            code: "ABCD2345".into(),
            up: 1234,
            down: 567_890,
            ended: Some("quota".into()),
            consumer: None,
        };
        let line = encode(&record);
        assert_eq!(*line.last().unwrap(), b'\n');
        let text = std::str::from_utf8(&line).unwrap();
        let json: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(json["seq"], 7);
        assert_eq!(json["sum"].as_str().unwrap().len(), 8);
        assert_eq!(decode(&line[..line.len() - 1]), Some(record));
        // Any change of a byte is caught.
        for i in 0..line.len() - 1 {
            let mut bad = line[..line.len() - 1].to_vec();
            bad[i] ^= 0x01;
            assert_eq!(decode(&bad), None, "flipped byte {i} of {text}");
        }
    }

    #[test]
    fn the_consumer_is_written_only_when_there_is_one_and_old_lines_still_read() {
        // A line as the gateway wrote it before records named a consumer (its checksum is
        // over these very bytes).
        let old = br#"{"seq":7,"at_ms":1732190000123,"session":"ABCD2345-1732190000000","code":"ABCD2345","up":1234,"down":567890,"ended":null,"sum":"8bcfd432"}"#;
        let record = decode(old).expect("an old line reads");
        assert_eq!(record.consumer, None);
        assert_eq!(record.total(), 1234 + 567_890);
        // Written again it is the same line: without a consumer nothing changed.
        assert_eq!(&encode(&record)[..old.len()], &old[..]);

        let signed_in = UsageRecord {
            consumer: Some("665f1c2ab3d4e5f601234567".into()),
            ..record
        };
        let line = encode(&signed_in);
        let text = std::str::from_utf8(&line).unwrap();
        assert!(
            text.contains(r#""ended":null,"consumer":"665f1c2ab3d4e5f601234567","sum":""#),
            "{text}"
        );
        assert_eq!(decode(&line[..line.len() - 1]), Some(signed_in));
    }

    #[test]
    fn appends_survive_a_reopen_and_unchanged_updates_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LedgerWriter::open(dir.path(), LedgerLimits::default()).unwrap();
        let a = "AAAA2345-1";
        let b = "BBBB2345-2";
        let first = w
            .append_at(10, &[update(a, 1, 2), update(b, 3, 4)])
            .unwrap();
        assert_eq!(first.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
        // Same totals, not ending: nothing to write, no fsync.
        let fsyncs = w.stats().fsyncs;
        assert!(w.append_at(11, &[update(a, 1, 2)]).unwrap().is_empty());
        assert_eq!(w.stats().fsyncs, fsyncs);
        let second = w
            .append_at(12, &[update(a, 5, 2), ended(b, 3, 4, "kicked")])
            .unwrap();
        assert_eq!(second.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(w.stats().fsyncs, fsyncs + 1, "one fsync per batch");
        drop(w);

        let w = LedgerWriter::open(dir.path(), LedgerLimits::default()).unwrap();
        assert_eq!(w.last_seq(), 4);
        assert_eq!(w.latest(a).unwrap().up, 5);
        assert_eq!(w.latest(b).unwrap().ended.as_deref(), Some("kicked"));
        assert_eq!(w.sessions().count(), 2);
        assert_eq!(w.recovery(), Recovery::default());
        assert_eq!(all(dir.path()).len(), 4);
    }

    #[test]
    fn refuses_totals_going_back_a_changed_code_and_updates_after_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LedgerWriter::open(dir.path(), LedgerLimits::default()).unwrap();
        let a = "AAAA2345-1";
        w.append_at(1, &[update(a, 10, 10)]).unwrap();
        let err = w
            .append_at(2, &[update("BBBB2345-2", 1, 1), update(a, 9, 11)])
            .unwrap_err();
        assert!(matches!(err, LedgerError::WentBack { .. }), "{err}");
        assert!(err.to_string().contains("AA…-1"), "{err}");
        assert!(
            !err.to_string().contains("AAAA2345"),
            "codes are secrets: {err}"
        );
        // Refused whole: the good update in the batch was not written either.
        assert_eq!(w.last_seq(), 1);
        assert!(w.latest("BBBB2345-2").is_none());
        // Within one batch, later updates are checked against earlier ones.
        let err = w
            .append_at(3, &[update(a, 20, 20), update(a, 15, 20)])
            .unwrap_err();
        assert!(matches!(err, LedgerError::WentBack { .. }));
        let mut other_code = update(a, 30, 30);
        other_code.code = "ZZZZ2345".into();
        assert!(matches!(
            w.append_at(4, &[other_code]).unwrap_err(),
            LedgerError::CodeChanged { .. }
        ));
        w.append_at(5, &[ended(a, 20, 20, "quota")]).unwrap();
        // Saying again that it ended is harmless; more usage after the end is a bug.
        assert!(
            w.append_at(6, &[ended(a, 20, 20, "quota")])
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            w.append_at(7, &[update(a, 21, 20)]).unwrap_err(),
            LedgerError::AlreadyEnded { .. }
        ));
        assert_eq!(all(dir.path()).len(), 2);
    }

    #[test]
    fn a_second_writer_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let _first = LedgerWriter::open(dir.path(), LedgerLimits::default()).unwrap();
        let err = LedgerWriter::open(dir.path(), LedgerLimits::default()).unwrap_err();
        assert!(matches!(err, LedgerError::Locked { .. }));
        assert!(err.to_string().contains("another process"), "{err}");
    }

    #[test]
    fn the_directory_is_created_0750_and_files_0640() {
        use std::os::unix::fs::PermissionsExt as _;
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("state/ledger");
        let mut w = LedgerWriter::open(&dir, LedgerLimits::default()).unwrap();
        w.append_at(1, &[update("AAAA2345-1", 1, 1)]).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o750);
        assert_eq!(mode(&dir.join(segment_name(1))), 0o640);
    }

    /// Found by fuzzing: a file named almost like a segment made every read fail.
    #[test]
    fn a_stray_file_named_like_a_segment_is_not_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LedgerWriter::open(dir.path(), LedgerLimits::default()).unwrap();
        w.append_at(1, &[update("AAAA2345-1", 100, 1)]).unwrap();
        for stray in ["usage-1.jsonl", "usage-+0000000000000000001.jsonl"] {
            std::fs::write(dir.path().join(stray), b"not a segment\n").unwrap();
        }
        let mut reader = LedgerReader::open(dir.path()).unwrap();
        assert_eq!(reader.read_after(0).unwrap().len(), 1);
        assert_eq!(reader.last_seq().unwrap(), 1);
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("usage-42.jsonl"), None);
    }

    /// Truncates the last record at every byte offset, as a crash in the middle of a write
    /// would: each reopen cuts the torn line off, keeps every record before it, and goes on
    /// numbering above every number handed out before (a reader may have seen the lost one).
    #[test]
    fn a_crash_in_the_middle_of_a_line_loses_nothing_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_name(1));
        {
            let mut w = LedgerWriter::open(dir.path(), LedgerLimits::default()).unwrap();
            for i in 1..=5u64 {
                w.append_at(i, &[update("AAAA2345-1", i * 100, i)]).unwrap();
            }
        }
        let whole = std::fs::read(&path).unwrap();
        let last_start = whole[..whole.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .unwrap()
            + 1;
        let mut handed_out = 5;
        for cut in last_start..whole.len() {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let mut w = LedgerWriter::open(dir.path(), LedgerLimits::default()).unwrap();
            assert_eq!(w.last_seq(), 4, "cut at {cut}");
            assert_eq!(w.latest("AAAA2345-1").unwrap().up, 400);
            assert_eq!(w.recovery().cut_bytes, (cut - last_start) as u64);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), last_start as u64);
            // The next record takes the lost one's place in the file, with a new number.
            let rec = w.append_at(9, &[update("AAAA2345-1", 450, 5)]).unwrap();
            assert!(rec[0].seq > handed_out, "cut at {cut}: {}", rec[0].seq);
            handed_out = rec[0].seq;
            drop(w);
            let seqs: Vec<u64> = all(dir.path()).iter().map(|r| r.seq).collect();
            assert_eq!(seqs, [1, 2, 3, 4, handed_out], "cut at {cut}");
        }
    }

    #[test]
    fn corrupt_lines_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_name(1));
        {
            let mut w = LedgerWriter::open(dir.path(), LedgerLimits::default()).unwrap();
            for i in 1..=3u64 {
                w.append_at(i, &[update("AAAA2345-1", i, i)]).unwrap();
            }
        }
        // Bit rot in the middle record.
        let mut bytes = std::fs::read(&path).unwrap();
        let second = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
        bytes[second + 3] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        let seqs: Vec<u64> = all(dir.path()).iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [1, 3]);
        let w = LedgerWriter::open(dir.path(), LedgerLimits::default()).unwrap();
        assert_eq!(w.recovery().corrupt_lines, 1);
        assert_eq!(w.recovery().cut_bytes, 0, "a line in the middle is not cut");
        assert_eq!(w.last_seq(), 3);

        // A corrupt complete last line is a torn write: cut off.
        drop(w);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 5] = b'x';
        std::fs::write(&path, &bytes).unwrap();
        let w = LedgerWriter::open(dir.path(), LedgerLimits::default()).unwrap();
        assert_eq!(w.last_seq(), 1);
        assert!(w.recovery().cut_bytes > 0);
    }

    #[test]
    fn segments_rotate_past_their_size() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LedgerWriter::open(dir.path(), small(1000, 1 << 20)).unwrap();
        for i in 1..=40u64 {
            w.append_at(i, &[update("AAAA2345-1", i, i), update("BBBB2345-1", i, 0)])
                .unwrap();
        }
        let files = segment_files(dir.path());
        assert!(files.len() >= 8, "{files:?}");
        assert_eq!(files[0], "usage-00000000000000000001.jsonl");
        for name in &files {
            let len = std::fs::metadata(dir.path().join(name)).unwrap().len();
            // Rotation happens at the first batch past the size: at most one batch over.
            assert!(len < 1000 + 400, "{name}: {len}");
        }
        assert_eq!(w.stats().rotations as usize, files.len() - 1);
        // A rotation costs one more fsync (the directory); other batches one; the high-water
        // mark two, once.
        assert_eq!(w.stats().fsyncs, 40 + files.len() as u64 + 2);
        let seqs: Vec<u64> = all(dir.path()).iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=80).collect::<Vec<_>>());
        // Reading after a seq skips whole segments but misses nothing.
        let mut reader = LedgerReader::open(dir.path()).unwrap();
        for after in [0, 1, 17, 40, 79, 80] {
            let got: Vec<u64> = reader
                .read_after(after)
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect();
            assert_eq!(got, (after + 1..=80).collect::<Vec<_>>());
        }
        assert_eq!(reader.last_seq().unwrap(), 80);
    }

    #[test]
    fn compaction_keeps_each_sessions_latest_totals_in_seq_order_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let limits = small(2000, 8000);
        let mut w = LedgerWriter::open(dir.path(), limits).unwrap();
        let mut expected: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut max_seen = 0;
        for i in 1..=400u64 {
            let session = format!("S{:03}ABCD-{}", i % 7, i % 7);
            let t = expected.entry(session.clone()).or_default();
            t.0 += i;
            t.1 += 2 * i;
            w.append_at(i, &[update(&session, t.0, t.1)]).unwrap();
            max_seen = max_seen.max(w.disk_bytes());
            let on_disk: u64 = segment_files(dir.path())
                .iter()
                .map(|n| std::fs::metadata(dir.path().join(n)).unwrap().len())
                .sum();
            assert_eq!(on_disk, w.disk_bytes());
            assert!(on_disk <= limits.max_bytes, "{on_disk} bytes after {i}");
        }
        assert!(w.stats().compactions > 0);
        let records = all(dir.path());
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        assert!(seqs.windows(2).all(|p| p[0] < p[1]), "{seqs:?}");
        assert_eq!(*seqs.last().unwrap(), 400);
        // Replaying what is left gives every session's latest totals.
        let mut replay: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for r in &records {
            replay.insert(r.session.clone(), (r.up, r.down));
        }
        assert_eq!(replay, expected);
        drop(w);
        let w = LedgerWriter::open(dir.path(), limits).unwrap();
        for (session, totals) in &expected {
            let latest = w.latest(session).unwrap();
            assert_eq!((latest.up, latest.down), *totals);
        }
        assert_eq!(w.last_seq(), 400);
    }

    #[test]
    fn compaction_drops_sessions_ended_longer_ago_than_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LedgerWriter::open(dir.path(), small(500, 1 << 20)).unwrap();
        w.append_at(DAY_MS, &[ended("OLDX2345-1", 5, 5, "expired")])
            .unwrap();
        w.append_at(20 * DAY_MS, &[ended("NEWX2345-1", 6, 6, "quota")])
            .unwrap();
        w.append_at(20 * DAY_MS, &[update("LIVE2345-1", 7, 7)])
            .unwrap();
        for i in 0..10 {
            w.append_at(20 * DAY_MS, &[update("FILL2345-1", i, i)])
                .unwrap();
        }
        w.compact(32 * DAY_MS).unwrap();
        assert!(w.latest("OLDX2345-1").is_none());
        assert!(w.latest("NEWX2345-1").is_some());
        let sessions: HashSet<String> = all(dir.path()).into_iter().map(|r| r.session).collect();
        assert!(!sessions.contains("OLDX2345-1"));
        assert!(sessions.contains("NEWX2345-1") && sessions.contains("LIVE2345-1"));
        // The sequence goes on after the dropped records.
        let next = w
            .append_at(32 * DAY_MS, &[update("LIVE2345-1", 8, 8)])
            .unwrap();
        assert_eq!(next[0].seq, 14);
    }

    #[test]
    fn over_the_limit_the_oldest_ended_sessions_go_first_but_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let limits = small(1000, 4000);
        let mut w = LedgerWriter::open(dir.path(), limits).unwrap();
        // Many short sessions within the retention: more than fits.
        for i in 0..100u64 {
            w.append_at(i, &[ended(&format!("ENDS2345-{i:03}"), i, i, "kicked")])
                .unwrap();
        }
        w.append_at(100, &[update("LIVE2345-1", 1, 1)]).unwrap();
        for i in 0..10u64 {
            w.append_at(101 + i, &[update("LIVE2346-1", i, i)]).unwrap();
        }
        assert!(w.disk_bytes() <= limits.max_bytes);
        assert!(w.latest("LIVE2345-1").is_some());
        assert!(
            w.latest("ENDS2345-000").is_none(),
            "oldest ended dropped first"
        );
        assert!(w.latest("ENDS2345-099").is_some(), "newest ended kept");
    }

    /// A crash after the compacted file was renamed into place but before the other old
    /// segments were removed leaves records twice; nothing is read twice or lost.
    #[test]
    fn leftovers_of_a_crashed_compaction_are_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LedgerWriter::open(dir.path(), small(300, 1 << 20)).unwrap();
        for i in 1..=20u64 {
            let mut batch = vec![update("AAAA2345-1", i, i), update("BBBB2345-1", i, 0)];
            // Two sessions whose latest records end up in the compacted file.
            if i == 1 {
                batch.push(ended("CCCC2345-1", 3, 3, "expired"));
            }
            if i == 5 {
                batch.push(update("DDDD2345-1", 5, 5));
            }
            w.append_at(i, &batch).unwrap();
        }
        let saved: Vec<(String, Vec<u8>)> = segment_files(dir.path())
            .iter()
            .map(|n| (n.clone(), std::fs::read(dir.path().join(n)).unwrap()))
            .collect();
        assert!(saved.len() > 3);
        w.compact(100).unwrap();
        assert_eq!(segment_files(dir.path()).len(), 2);
        drop(w);
        // Put the removed segments back, and a stray temp file, as a crash would leave them.
        for (name, bytes) in &saved[1..saved.len() - 1] {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        std::fs::write(dir.path().join(COMPACT_TMP), b"partial").unwrap();
        let check = |records: &[UsageRecord]| {
            let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
            assert!(seqs.windows(2).all(|p| p[0] < p[1]), "{seqs:?}");
            assert_eq!(*seqs.last().unwrap(), 42);
            let latest: BTreeMap<&str, u64> = records
                .iter()
                .map(|r| (r.session.as_str(), r.total()))
                .collect();
            assert_eq!(
                latest.into_iter().collect::<Vec<_>>(),
                [
                    ("AAAA2345-1", 40),
                    ("BBBB2345-1", 20),
                    ("CCCC2345-1", 6),
                    ("DDDD2345-1", 10)
                ]
            );
        };
        check(&all(dir.path()));
        let mut w = LedgerWriter::open(dir.path(), small(300, 1 << 20)).unwrap();
        assert!(!dir.path().join(COMPACT_TMP).exists());
        assert_eq!(w.latest("AAAA2345-1").unwrap().up, 20);
        assert_eq!(w.latest("DDDD2345-1").unwrap().up, 5);
        assert_eq!(w.last_seq(), 42);
        w.compact(100).unwrap();
        assert_eq!(segment_files(dir.path()).len(), 2);
        check(&all(dir.path()));
    }

    #[test]
    fn a_reader_follows_a_writer_that_appends_and_compacts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let writer = std::thread::spawn(move || {
            let mut w = LedgerWriter::open(&path, small(600, 3000)).unwrap();
            for i in 1..=300u64 {
                let batch: Vec<UsageUpdate> = (0..3)
                    .map(|s| update(&format!("SESS{s}ABC-1"), i * (s + 1), i))
                    .collect();
                w.append_at(i, &batch).unwrap();
            }
            w.append_at(301, &[ended("SESS0ABC-1", 300, 300, "expired")])
                .unwrap();
            w.stats()
        });
        let mut reader = LedgerReader::open(dir.path()).unwrap();
        let mut cursor = 0;
        let mut totals: HashMap<String, u64> = HashMap::new();
        let mut done = false;
        while !done {
            done = writer.is_finished();
            for r in reader.read_after(cursor).unwrap() {
                assert!(r.seq > cursor, "in order, never twice");
                cursor = r.seq;
                let t = totals.entry(r.session.clone()).or_default();
                assert!(r.total() >= *t, "totals never go back");
                *t = r.total();
            }
        }
        let stats = writer.join().unwrap();
        assert!(stats.compactions > 0 && stats.rotations > 0, "{stats:?}");
        assert_eq!(cursor, 901);
        assert_eq!(totals["SESS0ABC-1"], 600);
        assert_eq!(totals["SESS1ABC-1"], 900);
        assert_eq!(totals["SESS2ABC-1"], 1200);
    }

    #[test]
    fn a_reader_needs_the_directory() {
        let base = tempfile::tempdir().unwrap();
        let err = LedgerReader::open(&base.path().join("nope")).unwrap_err();
        assert!(matches!(err, LedgerError::Missing { .. }));
        let mut reader = LedgerReader::open(base.path()).unwrap();
        assert!(reader.read_after(0).unwrap().is_empty());
        assert_eq!(reader.last_seq().unwrap(), 0);
    }

    #[test]
    fn figures_bytes_per_record_and_fsyncs_per_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LedgerWriter::open(dir.path(), LedgerLimits::default()).unwrap();
        // A realistic batch: 20 sessions, gigabyte-sized totals, every ~10 s.
        for round in 1..=50u64 {
            let batch: Vec<UsageUpdate> = (0..20)
                .map(|s| UsageUpdate {
                    session: format!("ABCD{s:04}-1732190000000"),
                    code: format!("ABCD{s:04}"),
                    up: round * 12_345_678,
                    down: round * 987_654_321,
                    ended: None,
                    consumer: None,
                })
                .collect();
            w.append_at(1_732_190_000_000 + round * 10_000, &batch)
                .unwrap();
        }
        let stats = w.stats();
        println!(
            "ledger: {} bytes per record, {} fsyncs per batch ({} records in {} batches)",
            stats.bytes / stats.records,
            stats.fsyncs as f64 / stats.batches as f64,
            stats.records,
            stats.batches
        );
        assert_eq!(stats.batches, 50);
        // 50 batches, one fsync each, one for the directory entry of the first segment, and two
        // for the high-water mark (raised once per thousand records).
        assert_eq!(stats.fsyncs, 53);
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// Session index and how much it grows.
        Use(usize, u64, u64),
        End(usize),
        Read,
        Reopen,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (0usize..4, 0u64..5000, 0u64..50_000).prop_map(|(s, u, d)| Step::Use(s, u, d)),
            1 => (0usize..4).prop_map(Step::End),
            3 => Just(Step::Read),
            1 => Just(Step::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// However reads interleave with writes, rotations, compactions and restarts, the
        /// deltas a reader computes add up to each session's latest totals.
        #[test]
        fn deltas_read_add_up_to_the_latest_totals(steps in prop::collection::vec(step(), 1..80)) {
            let dir = tempfile::tempdir().unwrap();
            let limits = small(400, 4800);
            let mut w = LedgerWriter::open(dir.path(), limits).unwrap();
            let mut reader = LedgerReader::open(dir.path()).unwrap();
            // Session generation per slot: an ended session is replaced by a new one.
            let mut generation = [0u32; 4];
            let mut truth: HashMap<String, (u64, u64)> = HashMap::new();
            let mut seen: HashMap<String, u64> = HashMap::new();
            let mut reported: HashMap<String, u64> = HashMap::new();
            let mut cursor = 0;
            let mut now = 1;
            let mut read = |reader: &mut LedgerReader, cursor: &mut u64| -> Result<(), TestCaseError> {
                for r in reader.read_after(*cursor).unwrap() {
                    prop_assert!(r.seq > *cursor);
                    *cursor = r.seq;
                    let last = seen.entry(r.session.clone()).or_default();
                    prop_assert!(r.total() >= *last);
                    *reported.entry(r.session.clone()).or_default() += r.total() - *last;
                    *last = r.total();
                }
                Ok(())
            };
            for step in steps {
                now += 1000;
                match step {
                    Step::Use(slot, up, down) => {
                        let session = format!("SLOT{slot}ABC-{}", generation[slot]);
                        let t = truth.entry(session.clone()).or_default();
                        t.0 += up;
                        t.1 += down;
                        w.append_at(now, &[update(&session, t.0, t.1)]).unwrap();
                    }
                    Step::End(slot) => {
                        let session = format!("SLOT{slot}ABC-{}", generation[slot]);
                        let t = *truth.entry(session.clone()).or_default();
                        w.append_at(now, &[ended(&session, t.0, t.1, "kicked")]).unwrap();
                        generation[slot] += 1;
                    }
                    Step::Read => read(&mut reader, &mut cursor)?,
                    Step::Reopen => {
                        drop(w);
                        w = LedgerWriter::open(dir.path(), limits).unwrap();
                    }
                }
                prop_assert!(w.disk_bytes() <= limits.max_bytes);
            }
            read(&mut reader, &mut cursor)?;
            for (session, (up, down)) in &truth {
                prop_assert_eq!(reported.get(session).copied().unwrap_or(0), up + down, "{}", session);
            }
        }
    }
}
