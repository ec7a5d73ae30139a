//! The `viewgate` command line: parse arguments, then hand over to `viewgate::cli`.

use std::process::ExitCode;

use clap::Parser;

// The hit path makes a few dozen small allocations per request; mimalloc's
// thread-local free lists make each one several times cheaper than glibc's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = viewgate::cli::Cli::parse();
    viewgate::cli::run(cli)
}
