//! `edgeshare-fuzz [TARGET…]`: fuzzes each target (all by default) for `FUZZ_SECONDS` seconds
//! (default 20) after replaying its corpus, and prints per target the inputs tried, the time,
//! and the crashes found. Exits 1 if any target crashed.
//!
//! Environment: `FUZZ_SECONDS`, `FUZZ_SEED` (default: from the clock; printed),
//! `FUZZ_CORPUS` (default `fuzz/corpus`), `FUZZ_ARTIFACTS` (default `fuzz/artifacts`),
//! `FUZZ_INPUT_MS` (the per-input hang limit, default 10000).
//!
//! `edgeshare-fuzz --replay TARGET FILE…` runs single inputs (a saved crash) and prints the
//! outcome of each.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use edgeshare_fuzz::engine::{self, Settings};
use edgeshare_fuzz::targets;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn replay(target: &str, files: &[String]) -> ExitCode {
    let Some(mut target) = targets::make(target) else {
        eprintln!(
            "unknown target {target}; targets: {}",
            targets::NAMES.join(", ")
        );
        return ExitCode::from(2);
    };
    engine::install_panic_hook();
    let mut failed = false;
    for file in files {
        let input = match std::fs::read(file) {
            Ok(input) => input,
            Err(err) => {
                eprintln!("{file}: {err}");
                return ExitCode::from(2);
            }
        };
        match engine::run_one(target.as_mut(), &input) {
            Ok(signature) => println!("{file}: ok (outcome {signature:016x})"),
            Err(crash) => {
                failed = true;
                println!("{file}: {crash}");
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--replay") {
        let Some(target) = args.get(1) else {
            eprintln!("usage: edgeshare-fuzz --replay TARGET FILE…");
            return ExitCode::from(2);
        };
        return replay(target, &args[2..]);
    }
    if args.iter().any(|a| a.starts_with('-')) {
        eprintln!(
            "usage: edgeshare-fuzz [TARGET…] | --replay TARGET FILE…\ntargets: {}",
            targets::NAMES.join(", ")
        );
        return ExitCode::from(2);
    }
    let names: Vec<String> = if args.is_empty() {
        targets::NAMES.iter().map(|s| (*s).to_owned()).collect()
    } else {
        args
    };
    let seconds: f64 = env_or("FUZZ_SECONDS", 20.0);
    let seed: u64 = env_or("FUZZ_SEED", fastrand::u64(..));
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let settings = Settings {
        duration: Duration::from_secs_f64(seconds.max(0.0)),
        per_input: Duration::from_millis(env_or("FUZZ_INPUT_MS", 10_000)),
        seed,
        corpus: std::env::var_os("FUZZ_CORPUS").map_or_else(|| root.join("corpus"), PathBuf::from),
        artifacts: std::env::var_os("FUZZ_ARTIFACTS")
            .map_or_else(|| root.join("artifacts"), PathBuf::from),
    };
    println!("fuzz: seed {seed} (FUZZ_SEED={seed} repeats this run), {seconds} s per target");
    engine::install_panic_hook();
    let mut crashes = 0;
    for name in &names {
        let Some(mut target) = targets::make(name) else {
            eprintln!(
                "unknown target {name}; targets: {}",
                targets::NAMES.join(", ")
            );
            return ExitCode::from(2);
        };
        let stats = engine::fuzz(target.as_mut(), &settings);
        println!(
            "fuzz {name}: {} inputs in {:.1} s ({:.0}/s), {} seeds + {} kept for new outcomes, {} crashes",
            stats.inputs,
            stats.seconds,
            stats.per_second(),
            stats.seeds,
            stats.found,
            stats.crashes
        );
        crashes += stats.crashes;
    }
    if crashes > 0 {
        println!(
            "fuzz: {crashes} crashes; inputs saved under {}",
            settings.artifacts.display()
        );
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
