use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = edgeshare_agent::cli::Cli::parse();
    edgeshare_shared::cli::exit(edgeshare_agent::cli::run(cli))
}
