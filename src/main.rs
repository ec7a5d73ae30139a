//! The `viewgate` command line: parse arguments, then hand over to `viewgate::cli`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = viewgate::cli::Cli::parse();
    viewgate::cli::run(cli)
}
