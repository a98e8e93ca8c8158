//! `edgeshare-depcheck DENY_TOML METADATA_JSON`: checks `cargo metadata --format-version 1`
//! output against `deny.toml`'s licences, bans and sources, prints each violation and exits
//! 1 if there is any. No network: it reads the two files only.

use anyhow::Context;

fn main() -> anyhow::Result<std::process::ExitCode> {
    let mut args = std::env::args_os().skip(1);
    let (Some(deny), Some(metadata)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: edgeshare-depcheck DENY_TOML METADATA_JSON");
    };
    let read = |path: &std::ffi::OsStr| {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.to_string_lossy()))
    };
    let policy = edgeshare_depcheck::Policy::from_deny_toml(&read(&deny)?)
        .with_context(|| format!("{}: not a usable deny.toml", deny.to_string_lossy()))?;
    let violations = edgeshare_depcheck::check(&policy, &read(&metadata)?)
        .with_context(|| format!("{}: not cargo metadata output", metadata.to_string_lossy()))?;
    for violation in &violations {
        println!("{violation}");
    }
    if violations.is_empty() {
        println!("depcheck: every package's licence, name and source is allowed by deny.toml");
        Ok(std::process::ExitCode::SUCCESS)
    } else {
        println!(
            "depcheck: {} violation(s); fix the dependency or, after checking it by hand, deny.toml",
            violations.len()
        );
        Ok(std::process::ExitCode::FAILURE)
    }
}
