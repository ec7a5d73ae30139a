//! `viewgate check --config FILE`: exit 0 when valid, 1 with every problem.

use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;

/// Validates the file and reports.
pub(super) fn run(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            println!(
                "{}: ok ({} tenant{}, {} upstream key{})",
                path.display(),
                config.tenants.len(),
                if config.tenants.len() == 1 { "" } else { "s" },
                config.upstream.keys.len(),
                if config.upstream.keys.len() == 1 {
                    ""
                } else {
                    "s"
                },
            );
            for warning in config.warnings() {
                eprintln!("{}: warning: {warning}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
