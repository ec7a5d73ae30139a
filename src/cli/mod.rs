//! Commands, one file each; `run` dispatches and maps failures to exit codes.

mod check;
mod demo;
mod keys;
mod serve;
mod sim;
mod usage;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// viewgate: an authenticated caching gateway for LinkupAPI V2 `get_viewers`.
#[derive(Debug, Parser)]
#[command(name = "viewgate", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands of design.md.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (SIGTERM or ctrl-c drains and exits).
    Serve {
        /// The YAML configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration: exit 0, or 1 with every problem and its line.
    Check {
        /// The YAML configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print each tenant's credits used and left this period (reads the SQLite ledger).
    Usage {
        /// The YAML configuration.
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a new random tenant key and its sha256.
    Keygen,
    /// Read a key on stdin, print its sha256.
    HashKey,
    /// Run the upstream simulator.
    Sim {
        /// Address to listen on (port 0 picks a free port and prints it).
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
        /// Simulator settings (YAML: keys, totals, limits). Without it, one key
        /// named `demo` owning every account, read from VIEWGATE_SIM_KEY or minted.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Simulator + gateway on loopback with a demo config; prints keys and a curl line.
    Demo {
        /// Gateway address (falls back to a free port if taken).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

/// Runs a command.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Check { config } => check::run(&config),
        Command::Keygen => keys::keygen(),
        Command::Usage { config, json } => match usage::run(&config, json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("viewgate: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::HashKey => keys::hash_key(),
        Command::Serve { config } => with_runtime(serve::run(config)),
        Command::Sim { listen, config } => with_runtime(sim::run(listen, config)),
        Command::Demo { listen } => with_runtime(demo::run(listen)),
    }
}

fn with_runtime(job: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    crate::logging::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("viewgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(job);
    crate::logging::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("viewgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub(crate) fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Registered now, not when first polled: a signal that comes before the
    // future is awaited is not lost.
    let term = signal(SignalKind::terminate()).ok();
    let int = signal(SignalKind::interrupt()).ok();
    async move {
        let wait = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = wait(term) => {}
            () = wait(int) => {}
        }
    }
}
