//! The `viewgate` command line: parse arguments, then hand over to `viewgate::cli`.

use std::process::ExitCode;

use clap::Parser;

// The hit path makes a few dozen small allocations per request; mimalloc's
// thread-local free lists make each one several times cheaper than glibc's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h's option enum (the bindings name
/// no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long memory mimalloc holds free stays with the process before it is
/// given back to the OS. Its default (1 s) suits programs whose footprint
/// swings; the page cache's churn frees and refills memory continuously, so
/// each purge was followed by fresh page faults and the kernel zeroing the
/// same memory again (perf: `clear_page_erms` about 6 % of a miss while the
/// cache grows). An operator's `MIMALLOC_PURGE_DELAY` still wins.
const PURGE_DELAY_MS: std::ffi::c_long = 10_000;

fn main() -> ExitCode {
    // mimalloc reads its options from the environment in any letter case,
    // and this one also under its older name.
    let set_by_operator = std::env::vars_os().any(|(name, _)| {
        name.to_str().is_some_and(|n| {
            n.eq_ignore_ascii_case("MIMALLOC_PURGE_DELAY")
                || n.eq_ignore_ascii_case("MIMALLOC_RESET_DELAY")
        })
    });
    if !set_by_operator {
        // SAFETY: mi_option_set stores an integer in mimalloc's option
        // table; this runs first in main, before any other thread exists,
        // so nothing reads the option while it is written.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
    let cli = viewgate::cli::Cli::parse();
    viewgate::cli::run(cli)
}
