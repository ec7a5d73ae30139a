//! `viewgate keygen` and `viewgate hash-key`.

use std::io::Read;
use std::process::ExitCode;

use crate::keys::{KeyHash, mint_tenant_key};

/// Prints a new tenant key and the sha256 to put in the config.
pub(super) fn keygen() -> ExitCode {
    match mint_tenant_key() {
        Ok(key) => {
            println!("key:        {key}");
            println!("key_sha256: {}", KeyHash::of(key.as_bytes()).to_hex());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("viewgate: no randomness available: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reads a key on stdin (one trailing newline ignored) and prints its sha256.
pub(super) fn hash_key() -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("viewgate: cannot read stdin: {e}");
        return ExitCode::FAILURE;
    }
    let key = input.strip_suffix('\n').unwrap_or(&input);
    let key = key.strip_suffix('\r').unwrap_or(key);
    if key.is_empty() {
        eprintln!("viewgate: no key on stdin");
        return ExitCode::FAILURE;
    }
    println!("{}", KeyHash::of(key.as_bytes()).to_hex());
    ExitCode::SUCCESS
}
