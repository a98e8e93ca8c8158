use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = edgeshare_gateway::cli::Cli::parse();
    edgeshare_shared::cli::exit(edgeshare_gateway::cli::run(cli))
}
