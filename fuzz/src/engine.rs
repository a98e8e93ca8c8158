//! The fuzzing loop: replay the seed corpus, then mutate inputs for a fixed time, keeping any
//! input whose outcome signature is new (a cheap stand-in for coverage feedback on stable
//! Rust, where libFuzzer's instrumentation is not available).
//!
//! A crash is a panic (caught here, or swallowed by a tokio task and seen by the panic hook),
//! a property a target checks that does not hold, or an input that takes longer than the
//! per-input limit (a watchdog thread saves it and ends the process: a hung thread cannot be
//! stopped otherwise). Each crashing input is saved under the artifacts directory.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One fuzz target: a function from bytes to an outcome, with its properties checked inside.
pub trait Target {
    /// The name of the target, and of its corpus folder.
    fn name(&self) -> &'static str;
    /// Runs one input. `Ok` carries a signature of the outcome (inputs with a new one are
    /// kept and mutated further); `Err` says which property failed.
    fn run(&mut self, input: &[u8]) -> Result<u64, String>;
    /// Tokens the mutator inserts: keywords, delimiters, interesting values.
    fn dictionary(&self) -> &'static [&'static str];
    /// Inputs are cut to this many bytes.
    fn max_len(&self) -> usize {
        16 * 1024
    }
}

/// How one run is bounded and where its files are.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Fuzzing time after the seeds are replayed.
    pub duration: Duration,
    /// Longest time one input may take before it counts as a hang.
    pub per_input: Duration,
    pub seed: u64,
    /// `<corpus>/<target>/*` are the seeds.
    pub corpus: PathBuf,
    /// Crashing inputs are saved to `<artifacts>/<target>/`.
    pub artifacts: PathBuf,
}

/// What one run did.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub inputs: u64,
    pub seconds: f64,
    pub seeds: usize,
    /// Inputs kept because their outcome signature was new.
    pub found: usize,
    pub crashes: u64,
}

impl Stats {
    pub fn per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.inputs as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Panics seen by the hook (including those a tokio task swallowed), with the last message.
static PANICS: AtomicU64 = AtomicU64::new(0);
static LAST_PANIC: Mutex<String> = Mutex::new(String::new());

/// Replaces the panic hook with one that records panics quietly (they are reported once, with
/// the input that caused them).
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(non-string panic payload)".to_owned());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = format!("{message} at {location}");
    }));
}

/// Runs one input with panics caught; `Err` describes the crash.
pub fn run_one(target: &mut dyn Target, input: &[u8]) -> Result<u64, String> {
    let before = PANICS.load(Ordering::SeqCst);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target.run(input)));
    let panicked = PANICS.load(Ordering::SeqCst) != before;
    let last = || LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match result {
        Err(_) => Err(format!("panic: {}", last())),
        Ok(_) if panicked => Err(format!("panic (caught inside the target): {}", last())),
        Ok(Err(property)) => Err(format!("property failed: {property}")),
        Ok(Ok(signature)) => Ok(signature),
    }
}

/// The seed inputs of a target, in file-name order.
pub fn seeds(corpus: &Path, target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus.join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .filter_map(|path| {
            let name = path.file_name()?.to_string_lossy().into_owned();
            Some((name, std::fs::read(&path).ok()?))
        })
        .collect()
}

/// What the watchdog looks at: when the current input started (ms since `epoch`, 0 = idle)
/// and the input itself.
struct Current {
    epoch: Instant,
    started_ms: AtomicU64,
    input: Mutex<Vec<u8>>,
}

fn spawn_watchdog(current: Arc<Current>, name: &'static str, limit: Duration, dir: PathBuf) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let started = current.started_ms.load(Ordering::SeqCst);
            if started == 0 {
                continue;
            }
            let now = u64::try_from(current.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            if now.saturating_sub(started) > u64::try_from(limit.as_millis()).unwrap_or(u64::MAX) {
                let input = current
                    .input
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let saved = save(&dir, "hang", &input);
                eprintln!(
                    "fuzz {name}: HANG: one input took over {} ms; saved as {}",
                    limit.as_millis(),
                    saved.display()
                );
                println!("fuzz {name}: 1 crashes (hang)");
                std::process::exit(3);
            }
        }
    });
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A hash for outcome signatures.
pub fn signature(parts: &[&str]) -> u64 {
    parts
        .iter()
        .fold(0, |h: u64, p| h.rotate_left(5) ^ fnv(p.as_bytes()))
}

fn save(dir: &Path, kind: &str, input: &[u8]) -> PathBuf {
    let path = dir.join(format!("{kind}-{:016x}", fnv(input)));
    if let Err(err) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, input)) {
        eprintln!("cannot save {}: {err}", path.display());
    }
    path
}

/// Fuzzes `target` for `settings.duration` after replaying its seeds.
pub fn fuzz(target: &mut dyn Target, settings: &Settings) -> Stats {
    let name = target.name();
    let artifacts = settings.artifacts.join(name);
    let current = Arc::new(Current {
        epoch: Instant::now(),
        started_ms: AtomicU64::new(0),
        input: Mutex::new(Vec::new()),
    });
    spawn_watchdog(current.clone(), name, settings.per_input, artifacts.clone());
    let mut rng = fastrand::Rng::with_seed(settings.seed);
    let mut stats = Stats::default();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut pool: Vec<Vec<u8>> = Vec::new();
    let mut reported = 0;
    let started = Instant::now();
    let dictionary = target_dictionary(target);
    let max_len = target.max_len();

    let mut attempt = |input: &[u8], stats: &mut Stats| -> Option<u64> {
        {
            let mut shared = current.input.lock().unwrap_or_else(|e| e.into_inner());
            shared.clear();
            shared.extend_from_slice(input);
        }
        let now = u64::try_from(current.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        current.started_ms.store(now.max(1), Ordering::SeqCst);
        let result = run_one(target, input);
        current.started_ms.store(0, Ordering::SeqCst);
        stats.inputs += 1;
        match result {
            Ok(signature) => Some(signature),
            Err(crash) => {
                stats.crashes += 1;
                let saved = save(&artifacts, "crash", input);
                if reported < 5 {
                    reported += 1;
                    eprintln!(
                        "fuzz {name}: CRASH: {crash}; input saved as {}",
                        saved.display()
                    );
                }
                None
            }
        }
    };

    let seeds = seeds(&settings.corpus, name);
    stats.seeds = seeds.len();
    for (_, input) in &seeds {
        if let Some(signature) = attempt(input, &mut stats) {
            seen.insert(signature);
        }
        pool.push(input.clone());
    }
    if pool.is_empty() {
        pool.push(Vec::new());
    }
    let deadline = started + settings.duration;
    while Instant::now() < deadline {
        // A batch between clock reads.
        for _ in 0..16 {
            let mut input = pool[rng.usize(..pool.len())].clone();
            let other = &pool[rng.usize(..pool.len())];
            for _ in 0..rng.usize(1..=4) {
                mutate(&mut rng, &mut input, other, &dictionary);
            }
            input.truncate(max_len);
            if let Some(signature) = attempt(&input, &mut stats)
                && seen.insert(signature)
            {
                stats.found += 1;
                if pool.len() < 4096 {
                    pool.push(input);
                } else {
                    let slot = rng.usize(seeds.len().min(pool.len() - 1)..pool.len());
                    pool[slot] = input;
                }
            }
        }
    }
    stats.seconds = started.elapsed().as_secs_f64();
    stats
}

fn target_dictionary(target: &dyn Target) -> Vec<&'static [u8]> {
    target
        .dictionary()
        .iter()
        .map(|s| s.as_bytes())
        .chain(COMMON.iter().map(|s| s.as_bytes()))
        .collect()
}

/// Tokens useful for every target.
const COMMON: &[&str] = &[
    "\n",
    "\r\n",
    "\"",
    "'",
    "\\",
    "\\u0000",
    "\\ud800",
    "=",
    "&",
    "%",
    ":",
    ",",
    "{",
    "}",
    "[",
    "]",
    " ",
    "\t",
    "\0",
    "0",
    "-1",
    "1",
    "255",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "1e309",
    "-0",
    "0.5",
    "NaN",
    "inf",
    "é",
    "\u{2028}",
    "\u{feff}",
    "\u{10ffff}",
    "\u{1F600}",
];

const INTERESTING_BYTES: &[u8] = b"\0\x01\x7f\x80\xff\n\r\t \"'\\=&%;:,.#[]{}<>/";

/// One random change to `input`; `other` is another pool entry for splicing.
pub fn mutate(rng: &mut fastrand::Rng, input: &mut Vec<u8>, other: &[u8], dict: &[&[u8]]) {
    let len = input.len();
    match rng.u8(..12) {
        // Flip a bit.
        0 if len > 0 => {
            let i = rng.usize(..len);
            input[i] ^= 1 << rng.u8(..8);
        }
        // An interesting byte in place of one.
        1 if len > 0 => {
            let i = rng.usize(..len);
            input[i] = INTERESTING_BYTES[rng.usize(..INTERESTING_BYTES.len())];
        }
        // Insert random bytes.
        2 => {
            let at = rng.usize(..=len);
            let n = rng.usize(1..=8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
            input.splice(at..at, bytes);
        }
        // Delete a range.
        3 if len > 0 => {
            let at = rng.usize(..len);
            let n = rng.usize(1..=(len - at).min(32));
            input.drain(at..at + n);
        }
        // Duplicate a range somewhere.
        4 if len > 0 => {
            let at = rng.usize(..len);
            let n = rng.usize(1..=(len - at).min(64));
            let chunk = input[at..at + n].to_vec();
            let to = rng.usize(..=len);
            input.splice(to..to, chunk);
        }
        // Splice with another input.
        5 if !other.is_empty() => {
            let cut = rng.usize(..=len);
            let from = rng.usize(..other.len());
            input.truncate(cut);
            input.extend_from_slice(&other[from..]);
        }
        // Whole-line edits: delete, duplicate or swap lines (TOML, JSONL, HTTP headers).
        6 | 7 => line_edit(rng, input),
        // A number in place of a run of digits.
        8 => replace_number(rng, input, dict),
        // Insert or overwrite with a dictionary token (the most useful step: twice as likely).
        _ if !dict.is_empty() => {
            let token = dict[rng.usize(..dict.len())];
            let at = rng.usize(..=len);
            if rng.bool() || at == len {
                input.splice(at..at, token.iter().copied());
            } else {
                let end = (at + token.len()).min(len);
                input.splice(at..end, token.iter().copied());
            }
        }
        _ => input.push(rng.u8(..)),
    }
}

fn line_edit(rng: &mut fastrand::Rng, input: &mut Vec<u8>) {
    let mut lines: Vec<Vec<u8>> = input
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect();
    if lines.is_empty() {
        return;
    }
    let i = rng.usize(..lines.len());
    match rng.u8(..3) {
        0 => {
            lines.remove(i);
        }
        1 => {
            let line = lines[i].clone();
            lines.insert(rng.usize(..=lines.len()), line);
        }
        _ => {
            let j = rng.usize(..lines.len());
            lines.swap(i, j);
        }
    }
    *input = lines.concat();
}

fn replace_number(rng: &mut fastrand::Rng, input: &mut Vec<u8>, dict: &[&[u8]]) {
    let starts: Vec<usize> = (0..input.len())
        .filter(|&i| input[i].is_ascii_digit() && (i == 0 || !input[i - 1].is_ascii_digit()))
        .collect();
    if starts.is_empty() {
        return;
    }
    let at = starts[rng.usize(..starts.len())];
    let end = at
        + input[at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
    let numbers: Vec<&[u8]> = dict
        .iter()
        .copied()
        .filter(|t| {
            !t.is_empty()
                && t.iter()
                    .all(|b| b.is_ascii_digit() || *b == b'-' || *b == b'.' || *b == b'e')
        })
        .collect();
    let replacement: Vec<u8> = if numbers.is_empty() || rng.bool() {
        let digits = rng.u64(..).to_string().into_bytes();
        let n = rng.usize(1..=digits.len().min(3));
        digits[..n].to_vec()
    } else {
        numbers[rng.usize(..numbers.len())].to_vec()
    };
    input.splice(at..end, replacement);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_in_bounds() {
        let mut rng = fastrand::Rng::with_seed(1);
        let dict: Vec<&[u8]> = vec![b"x", b"42"];
        let mut input = b"a=1\nb=22\n".to_vec();
        for _ in 0..20_000 {
            mutate(&mut rng, &mut input, b"other 7\n", &dict);
            input.truncate(256);
            if input.is_empty() {
                input = b"k=3\n".to_vec();
            }
        }
    }
}
