//! `ledger`: arbitrary segment files in a ledger directory, read by `LedgerReader` (what the
//! agent's usage reporter polls), checked against an independent decoder of the format.
//!
//! Input, as text:
//!
//! ```text
//! after 3                                   <- optional: the `read_after` cursor
//! === usage-00000000000000000001.jsonl      <- a file; the lines up to the next === are its
//! {"seq":1,…,"sum":"0a1b2c3d"}                 contents (before any ===: the first segment)
//! === usage-00000000000000000004.jsonl !sum <- `!sum`: put right checksums on its lines first
//! ```
//!
//! `!sum` lets mutated JSON reach the reader's parser: without it almost every mutation only
//! breaks a checksum.

use std::path::Path;

use edgeshare_shared::ledger::{LedgerReader, UsageRecord};
use sha2::{Digest as _, Sha256};

use crate::engine::{Target, signature};

const SUM_FIELD: &[u8] = b",\"sum\":\"";
const SUM_SUFFIX_LEN: usize = SUM_FIELD.len() + 8 + 2;
const FIRST_SEGMENT: &str = "usage-00000000000000000001.jsonl";

#[derive(Debug)]
pub struct LedgerTarget {
    dir: tempfile::TempDir,
}

impl LedgerTarget {
    pub fn new() -> Self {
        LedgerTarget {
            dir: tempfile::tempdir().unwrap_or_else(|e| panic!("cannot make a temp dir: {e}")),
        }
    }
}

impl Default for LedgerTarget {
    fn default() -> Self {
        Self::new()
    }
}

fn checksum(json: &[u8]) -> String {
    Sha256::digest(json)[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The format as the module docs describe it, decoded independently of the reader.
fn decode(line: &[u8]) -> Option<UsageRecord> {
    let split = line.len().checked_sub(SUM_SUFFIX_LEN)?;
    let (head, tail) = line.split_at(split);
    if !tail.starts_with(SUM_FIELD) || !tail.ends_with(b"\"}") {
        return None;
    }
    let sum = &tail[SUM_FIELD.len()..SUM_FIELD.len() + 8];
    let mut json = head.to_vec();
    json.push(b'}');
    if checksum(&json).as_bytes() != sum {
        return None;
    }
    serde_json::from_slice(&json).ok()
}

/// Puts a right checksum on every line that is a JSON object (keeping a `sum` field's place).
fn fix_sums(contents: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(contents.len() + 64);
    for line in contents.split_inclusive(|&b| b == b'\n') {
        let (body, newline) = match line.strip_suffix(b"\n") {
            Some(body) => (body, &b"\n"[..]),
            None => (line, &b""[..]),
        };
        let head = match body.len().checked_sub(SUM_SUFFIX_LEN) {
            Some(split) if body[split..].starts_with(SUM_FIELD) => &body[..split],
            _ => match body.strip_suffix(b"}") {
                Some(head) => head,
                None => {
                    out.extend_from_slice(line);
                    continue;
                }
            },
        };
        let mut json = head.to_vec();
        json.push(b'}');
        out.extend_from_slice(head);
        out.extend_from_slice(SUM_FIELD);
        out.extend_from_slice(checksum(&json).as_bytes());
        out.extend_from_slice(b"\"}");
        out.extend_from_slice(newline);
    }
    out
}

/// The files an input describes, and the `after` cursor.
fn files(input: &[u8]) -> (u64, Vec<(String, Vec<u8>)>) {
    let mut after = 0;
    let mut files: Vec<(String, Vec<u8>, bool)> =
        vec![(FIRST_SEGMENT.to_owned(), Vec::new(), false)];
    let mut first_line = true;
    for line in input.split_inclusive(|&b| b == b'\n') {
        if first_line && let Some(rest) = line.strip_prefix(b"after ") {
            first_line = false;
            after = String::from_utf8_lossy(rest).trim().parse().unwrap_or(0);
            continue;
        }
        first_line = false;
        if let Some(header) = line.strip_prefix(b"=== ") {
            let header = String::from_utf8_lossy(header);
            let header = header.trim_end_matches('\n');
            let (name, fix) = match header.strip_suffix(" !sum") {
                Some(name) => (name, true),
                None => (header, false),
            };
            files.push((name.to_owned(), Vec::new(), fix));
            continue;
        }
        if let Some(last) = files.last_mut() {
            last.1.extend_from_slice(line);
        }
    }
    let usable = |name: &str| {
        !name.is_empty()
            && name != "."
            && name != ".."
            && !name.contains('/')
            && !name.contains('\0')
            && name.len() < 200
    };
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, contents, fix) in files {
        if !usable(&name) {
            continue;
        }
        let contents = if fix { fix_sums(&contents) } else { contents };
        // A later file of the same name replaces an earlier one.
        out.retain(|(n, _)| *n != name);
        out.push((name, contents));
    }
    (after, out)
}

/// `usage-<u64>.jsonl` as the reader lists them (any spelling of the number).
fn segment_first(name: &str) -> Option<u64> {
    name.strip_prefix("usage-")?
        .strip_suffix(".jsonl")?
        .parse()
        .ok()
}

fn valid_records(contents: &[u8]) -> Vec<UsageRecord> {
    // Only complete lines: the last one, without its newline, may still be being written.
    let complete = match contents.iter().rposition(|&b| b == b'\n') {
        Some(end) => &contents[..end],
        None => return Vec::new(),
    };
    complete.split(|&b| b == b'\n').filter_map(decode).collect()
}

fn clear(dir: &Path) -> Result<(), String> {
    for entry in std::fs::read_dir(dir).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

fn check_sorted_and_known(records: &[UsageRecord], known: &[UsageRecord]) -> Result<(), String> {
    for pair in records.windows(2) {
        if pair[0].seq >= pair[1].seq {
            return Err(format!(
                "records out of order or repeated: seq {} then {}",
                pair[0].seq, pair[1].seq
            ));
        }
    }
    for record in records {
        if !known.contains(record) {
            return Err(format!(
                "the reader yielded a record that no line with a good checksum holds: {record:?}"
            ));
        }
    }
    Ok(())
}

impl Target for LedgerTarget {
    fn name(&self) -> &'static str {
        "ledger"
    }

    fn run(&mut self, input: &[u8]) -> Result<u64, String> {
        let dir = self.dir.path();
        clear(dir)?;
        let (after, files) = files(input);
        for (name, contents) in &files {
            std::fs::write(dir.join(name), contents).map_err(|e| format!("{name}: {e}"))?;
        }
        // What an independent reading of the directory says. A file named almost like a
        // segment (`usage-1.jsonl`) is not one: the reader must ignore it (it once made every
        // read fail).
        let mut segments: Vec<(u64, Vec<UsageRecord>)> = files
            .iter()
            .filter_map(|(name, contents)| {
                let first = segment_first(name)?;
                (format!("usage-{first:020}.jsonl") == *name)
                    .then(|| (first, valid_records(contents)))
            })
            .collect();
        segments.sort_by_key(|s| s.0);
        let known: Vec<UsageRecord> = segments.iter().flat_map(|s| s.1.iter().cloned()).collect();
        // Segment i holds only seqs below the first of segment i + 1 (what the writer keeps).
        let ordered = segments
            .windows(2)
            .all(|w| w[0].1.iter().all(|r| r.seq < w[1].0));

        let mut reader = LedgerReader::open(dir).map_err(|e| format!("open: {e}"))?;
        let all = reader
            .read_after(0)
            .map_err(|e| format!("read_after(0) failed on a still directory: {e}"))?;
        check_sorted_and_known(&all, &known)?;
        // Sequences start at 1: a line claiming seq 0 is never "after 0".
        let mut expected: Vec<u64> = known.iter().map(|r| r.seq).filter(|&s| s > 0).collect();
        expected.sort_unstable();
        expected.dedup();
        let got: Vec<u64> = all.iter().map(|r| r.seq).collect();
        if ordered && got != expected {
            return Err(format!(
                "read_after(0) gave seqs {got:?}, the lines with good checksums hold {expected:?}"
            ));
        }

        let later = reader
            .read_after(after)
            .map_err(|e| format!("read_after({after}) failed: {e}"))?;
        check_sorted_and_known(&later, &known)?;
        if let Some(bad) = later.iter().find(|r| r.seq <= after) {
            return Err(format!("read_after({after}) yielded seq {}", bad.seq));
        }
        if ordered {
            let want: Vec<u64> = expected.iter().copied().filter(|&s| s > after).collect();
            let got: Vec<u64> = later.iter().map(|r| r.seq).collect();
            if got != want {
                return Err(format!(
                    "read_after({after}) gave {got:?}, expected {want:?}"
                ));
            }
        }

        let last = reader
            .last_seq()
            .map_err(|e| format!("last_seq failed: {e}"))?;
        let want = segments
            .iter()
            .rev()
            .find(|s| !s.1.is_empty())
            .and_then(|s| s.1.iter().map(|r| r.seq).max())
            .unwrap_or(0);
        if last != want {
            return Err(format!("last_seq is {last}, expected {want}"));
        }
        let bucket = |n: usize| match n {
            0 => "0",
            1 => "1",
            2..=4 => "few",
            _ => "many",
        };
        Ok(signature(&[
            bucket(files.len()),
            bucket(all.len()),
            bucket(later.len()),
            if ordered { "ordered" } else { "unordered" },
            bucket(files.len() - segments.len()),
        ]))
    }

    fn dictionary(&self) -> &'static [&'static str] {
        &[
            "=== usage-00000000000000000001.jsonl\n",
            "=== usage-00000000000000000005.jsonl !sum\n",
            "=== usage-18446744073709551615.jsonl\n",
            "=== usage-1.jsonl\n",
            "=== writer.lock\n",
            "=== .compact.tmp\n",
            " !sum",
            "after ",
            "{\"seq\":",
            "\"at_ms\":",
            "\"session\":",
            "\"code\":",
            "\"up\":",
            "\"down\":",
            "\"ended\":",
            "\"ended\":null",
            "\"ended\":\"quota\"",
            ",\"sum\":\"",
            ",\"sum\":\"00000000\"}",
            "\"x\":[1,{\"y\":2}]",
            "\"seq\":1,\"seq\":2",
            "}\n",
            "{}\n",
        ]
    }

    fn max_len(&self) -> usize {
        16 * 1024
    }
}
