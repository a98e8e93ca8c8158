//! `edgeshare-gen OUT_DIR`: writes the man pages (`OUT_DIR/man/*.1`, one per command and
//! subcommand) and the shell completions (`OUT_DIR/completions/{bash,zsh,fish}/…`) of
//! `edgeshare-gateway` and `edgeshare-agent`, from their clap definitions, so the packaged
//! pages never disagree with `--help`. Runs at packaging time on the build machine (the
//! pages are the same for every architecture); nothing of this is in the daemons.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

fn main() -> anyhow::Result<()> {
    let out: PathBuf = std::env::args_os()
        .nth(1)
        .context("usage: edgeshare-gen OUT_DIR")?
        .into();
    for command in [
        edgeshare_gateway::cli::Cli::command(),
        edgeshare_agent::cli::Cli::command(),
    ] {
        write_man_pages(&command, &out.join("man"))?;
        write_completions(command, &out.join("completions"))?;
    }
    println!("man pages and completions written to {}", out.display());
    Ok(())
}

/// The command's page, and one per subcommand (`edgeshare-gateway-codes-create.1`), each
/// named the way `man edgeshare-gateway-codes-create` finds it.
fn write_man_pages(command: &clap::Command, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Each subcommand's page carries the version too.
    let mut command = command.clone().propagate_version(true);
    command.build();
    write_page(&command, dir)
}

fn write_page(command: &clap::Command, dir: &Path) -> anyhow::Result<()> {
    let name = command
        .get_display_name()
        .unwrap_or_else(|| command.get_name())
        .to_owned();
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut page)
        .with_context(|| format!("rendering the man page of {name}"))?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        write_page(sub, dir)?;
    }
    Ok(())
}

fn write_completions(mut command: clap::Command, dir: &Path) -> anyhow::Result<()> {
    let name = command.get_name().to_owned();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let shell_dir = dir.join(shell.to_string());
        std::fs::create_dir_all(&shell_dir)
            .with_context(|| format!("creating {}", shell_dir.display()))?;
        clap_complete::generate_to(shell, &mut command, &name, &shell_dir)
            .with_context(|| format!("writing the {shell} completion of {name}"))?;
    }
    Ok(())
}
