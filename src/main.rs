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
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set only stores an integer in mimalloc's option
        // table (atomically); it may be called at any time from any thread.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
    let cli = viewgate::cli::Cli::parse();
    viewgate::cli::run(cli)
}
